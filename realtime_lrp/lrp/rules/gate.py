"""Signal-take-all for multiplicative gates ``z = s * g(s)`` (squeeze-excitation).

The gate ``g`` (a sigmoid of a pooled side branch of ``s``) rescales the signal without being
evidence itself, so the signal takes all of the product's relevance and the gate branch none:
Pahde et al., "Optimizing explanations by network canonization and hyperparameter search",
CVPRW 2023 (their ``SignalOnlyGate``), the rule Arras et al. 2017 used for LSTM gates.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules.base import Propagator, Rule, RuleContext


class SignalTakeAll(Rule):
    """``R_s = R_z``, ``R_g = 0``: the gate's part is None, so the engine sends nothing down its branch."""

    kinds = ("gate",)

    def bind(self, node: Node, dtype: torch.dtype, context: RuleContext) -> Propagator:
        self._check(node)

        def propagate(a: tuple[Tensor, Tensor], out: Tensor, aux: Union[Tensor, None],
                      R: Tensor) -> tuple[tuple[Tensor, None], None]:
            return (R, None), None

        return propagate
