"""The relevance filter: keep only the largest k fraction of relevance per sample.

As in PyTorchRelevancePropagation, ``k = max(1, int(top_k * C*H*W))`` values are kept per
sample and the rest set to zero, without renormalisation. Instead of ``topk`` plus a
scatter into a fresh tensor, the k-th largest value is found and used as a threshold, so
the filter is one selection and one masked multiply.

At ties the two differ: values equal to the k-th largest are all kept, where ``topk``
keeps an arbitrary subset of them. Ties at zero change nothing; other ties appear only
where a frame has identical regions, and keeping all of them keeps the map symmetric.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor

FilterMode = Literal["signed", "magnitude"]


class RelevanceFilter:
    """Callable ``R -> R`` keeping the top ``top_k`` fraction per sample.

    ``mode="signed"`` ranks values (the reference behaviour, which drops negative
    relevance first); ``"magnitude"`` ranks |values|, keeping strong evidence of either
    sign, which suits signed presets.
    """

    def __init__(self, top_k: float, mode: FilterMode = "signed"):
        if not 0.0 <= top_k <= 1.0:
            raise ValueError(f"top_k must be in [0, 1], got {top_k}")
        if mode not in ("signed", "magnitude"):
            raise ValueError(f"filter mode must be 'signed' or 'magnitude', got {mode!r}")
        self.top_k = top_k
        self.mode = mode

    @property
    def active(self) -> bool:
        """False for ``top_k`` 0 or 1, which keep everything."""
        return 0.0 < self.top_k < 1.0

    def __call__(self, relevance: Tensor) -> Tensor:
        flat = relevance.flatten(1)
        k = max(1, int(self.top_k * flat.shape[1]))
        key = flat.abs() if self.mode == "magnitude" else flat
        threshold = key.topk(k, dim=1, sorted=False).values.amin(1, keepdim=True)
        return (flat * (key >= threshold)).view_as(relevance)
