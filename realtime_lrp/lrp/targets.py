"""Target modes: what relevance the output layer starts from, and how the input maps are combined.

Plain LRP starts from the explained class's logit alone. Under z+ on the convolutions the
maps of all classes of one image are then nearly proportional (Gu et al. 2018): "why class B?"
shows class A's heat again. Two modes make the maps class-discriminative:

- ``contrastive``: CLRP (Gu, Yang and Tresp, ACCV 2018), its first variant as the authors'
  code builds it. The class's own relevance R starts from |z_t| on it (one-hot times the
  magnitude of its logit, so a class with a negative logit is explained too), a dual
  relevance R_dual from |z_n| on every other class n (the explained class at 0). Both
  are propagated by the same rules, each map is normalised by its total |relevance|, and
  CLRP = max(0, R − R_dual · Σ|R| / Σ|R_dual|): the evidence for the class that is not
  evidence for the others, in the plain map's units. The maps are summed over colour channels
  before the difference. The two propagations run as one batch of 2N.
- ``softmax-gradient``: SGLRP (Iwana, Kuroki and Uchida, ICCVW 2019). The output relevance is
  the gradient of the explained class's softmax probability p_t with respect to the logits:
  p_t·(1 − p_t) for the class, −p_t·p_n for every other class n; the signed relevance is then
  propagated as usual, so other classes' evidence enters with a negative sign.

Each mode is a few tensor operations: no host synchronisation, so a captured CUDA graph runs it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TARGET_MODES: tuple[str, ...] = ("plain", "contrastive", "softmax-gradient")


@dataclass(frozen=True)
class TargetMode:
    """How a call starts and ends: ``copies`` propagations per sample, ``start`` and ``finish``."""

    name: str

    @property
    def copies(self) -> int:
        """How many relevance propagations each sample needs (its input is repeated that often)."""
        return 2 if self.name == "contrastive" else 1

    def start(self, logits: Tensor, relevance: Tensor, explained: Tensor) -> Tensor:
        """The output relevance (copies·N, classes) from the logits (N, classes), the plain relevance and classes."""
        if self.name == "contrastive":
            dual = logits.abs().scatter(1, explained.view(-1, 1), 0.0)
            return torch.cat([relevance.abs(), dual])
        if self.name == "softmax-gradient":
            p = torch.softmax(logits, dim=1)
            p_t = p.gather(1, explained.view(-1, 1))
            return p_t * (torch.zeros_like(p).scatter(1, explained.view(-1, 1), 1.0) - p)
        return relevance

    def finish(self, maps: Tensor) -> Tensor:
        """The maps (N, H, W) from the propagated ones (copies·N, H, W)."""
        if self.name != "contrastive":
            return maps
        own, dual = maps.chunk(2)
        own_total = own.abs().sum((1, 2), keepdim=True)
        dual_total = dual.abs().sum((1, 2), keepdim=True)
        scale = torch.where(dual_total > 0, own_total / dual_total.clamp(min=torch.finfo(maps.dtype).tiny),
                            torch.zeros_like(dual_total))
        return (own - dual * scale).clamp(min=0)


def target_mode(name: str) -> TargetMode:
    """The mode called ``name``; anything else is a one-line ValueError naming the choices."""
    if name not in TARGET_MODES:
        raise ValueError(f"unknown target mode {name!r}; choose one of {', '.join(TARGET_MODES)}")
    return TargetMode(name)
