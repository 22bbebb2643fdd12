"""Named LRP presets: which rule each node of a model's graph gets.

A preset maps a node's kind (``conv``, ``linear``, ``maxpool``, ``avgpool``,
``adaptive_avgpool``, ``add`` for residual sums) and whether it is the first layer (in
``named_modules()`` order, as zennit counts: the first Conv/Linear, or the first Conv for
``first_conv_only`` presets) to a rule from :mod:`realtime_lrp.lrp.rules`.
Adding a preset is adding one entry to ``PRESETS``.
This module imports no torch at import time, so the CLI can list presets cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass(frozen=True)
class Preset:
    """A rule set: ``rule_for(kind, first, bounds)`` returns the rule for one node.

    ``first_conv_only``: the first-layer rule goes to the first Conv (zennit's
    ``EpsilonGammaBox``), not to the first Conv or Linear (its ``EpsilonPlusFlat``).
    """

    name: str
    description: str
    reference: str
    signed: bool
    select: Callable[[str, bool, tuple], object] = field(repr=False)
    first_conv_only: bool = False

    def rule_for(self, kind: str, first: bool, bounds: tuple) -> object:
        """Rule for a node of ``kind``; ``bounds`` are the (low, high) normalised pixel bounds."""
        return self.select(kind, first, bounds)


def _epsilon_plus_flat(kind: str, first: bool, bounds: tuple) -> object:
    from realtime_lrp.lrp import rules

    if kind == "conv":
        return rules.Flat() if first else rules.ZPlus()
    if kind == "linear":
        return rules.Flat() if first else rules.Epsilon()
    if kind == "maxpool":
        return rules.WinnerTakeAll()
    return rules.Norm()


def _epsilon_gamma_box(kind: str, first: bool, bounds: tuple) -> object:
    from realtime_lrp.lrp import rules

    if kind == "conv":
        return rules.ZBox(*bounds) if first else rules.Gamma(0.25)
    if kind == "linear":
        return rules.Epsilon()
    if kind == "maxpool":
        return rules.WinnerTakeAll()
    return rules.Norm()


def _zplus(kind: str, first: bool, bounds: tuple) -> object:
    from realtime_lrp.lrp import rules

    if kind in ("conv", "linear"):
        return rules.ZPlus(stabilizer=1e-5, zero_bias=True, ones_input=first)
    if kind == "maxpool":
        return rules.AvgPoolZ(stabilizer=1e-5)
    if kind == "add":
        return rules.SumZPlus(stabilizer=1e-5)
    return rules.Norm(stabilizer=1e-5, signed_stabilizer=False)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "epsilon-plus-flat",
            "Flat on the first conv, z+ on the other convs, epsilon on linears, winner-take-all max-pool, "
            "Norm on residual sums",
            "zennit EpsilonPlusFlat()",
            True,
            _epsilon_plus_flat,
        ),
        Preset(
            "epsilon-gamma-box",
            "ZBox on the first conv, gamma(0.25) on the other convs, epsilon on linears, Norm on residual sums",
            "zennit EpsilonGammaBox(low, high)",
            True,
            _epsilon_gamma_box,
            first_conv_only=True,
        ),
        Preset(
            "zplus",
            "z+ with zeroed bias everywhere, max-pool as an average pool of its windows, first layer on an "
            "all-ones input, residual sums by z+ on their positive summands",
            "PyTorchRelevancePropagation",
            False,
            _zplus,
        ),
    )
}
PRESET_NAMES: Sequence[str] = tuple(PRESETS)
