"""The relevance filter: keep only the largest k fraction of relevance per sample.

As in PyTorchRelevancePropagation, ``k = max(1, int(top_k * C*H*W))`` values are kept per
sample and the rest set to zero, without renormalisation. Instead of ``topk`` plus a
scatter into a fresh tensor, the k-th largest value is found and used as a threshold, so
the filter is one selection and one masked multiply.

At ties the two differ: values equal to the k-th largest are all kept, where ``topk``
keeps an arbitrary subset of them. Ties at zero change nothing; other ties appear only
where a frame has identical regions, and keeping all of them keeps the map symmetric.

Three exact ways find the k-th largest value (:func:`kth_largest`): ``topk``; a radix
select that counts the 32 bits of each value's order-preserving integer form in two 16-bit
passes with ``scatter_add``/``cumsum``; and ``sample``, which bounds the threshold from
below with a sample and selects exactly among the values above the bound. The radix select
has no host synchronisation and no data-dependent shapes, so it can live inside a CUDA
graph, and it never gathers the k kept values. ``sample`` is the CPU's: one comparison pass
and a selection among about 1.5 k values instead of a selection among all of them.
``method="auto"`` takes ``sample`` on the CPU and the radix select on CUDA.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

FilterMode = Literal["signed", "magnitude"]
SelectMethod = Literal["auto", "topk", "radix", "sample"]
SELECT_METHODS: tuple[str, ...] = ("auto", "topk", "radix", "sample")

DEFAULT_TOP_K = 0.05
"""The top-k of the commands, the frame processor and the serve page: the most faithful and steadiest
filter under ``rtlrp evaluate`` (README). The library's :class:`~realtime_lrp.lrp.engine.LRP` keeps
0 (no filter) unless asked: plain LRP is what zennit and the references compute."""

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS


def _sortable(values: Tensor) -> Tensor:
    """fp32 → int32 whose signed order is the values' order (-0.0 is made +0.0 first)."""
    bits = (values + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _unsortable(keys: Tensor) -> Tensor:
    """The inverse of :func:`_sortable` (the mapping is its own inverse)."""
    return (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(torch.float32)


def _check_method(method: str) -> None:
    if method not in SELECT_METHODS:
        raise ValueError(f"select method must be one of {', '.join(SELECT_METHODS)}, got {method!r}")


def _radix_kth_largest(values: Tensor, k: int) -> Tensor:
    """Per row of ``values`` (N, M) fp32, the k-th largest value, exactly, as (N, 1)."""
    keys = _sortable(values.contiguous())
    n = keys.shape[0]
    remaining = torch.full((n, 1), k, dtype=torch.int32, device=keys.device)
    prefix = None
    for shift in (_DIGIT_BITS, 0):
        if prefix is None:
            digit = (keys >> shift) + _BINS // 2  # the top digit is signed: shift it to [0, BINS)
            counts = torch.ones_like(digit)
        else:
            digit = (keys >> shift) & (_BINS - 1)
            counts = ((keys >> (shift + _DIGIT_BITS)) == prefix).to(torch.int32)
        hist = torch.zeros(n, _BINS, dtype=torch.int32, device=keys.device)
        hist.scatter_add_(1, digit.long(), counts)
        at_least = hist.flip(1).cumsum(1, dtype=torch.int32).flip(1)  # values with digit >= b
        chosen = (at_least >= remaining).sum(1, keepdim=True, dtype=torch.int32) - 1
        above = at_least.gather(1, chosen.long()) - hist.gather(1, chosen.long())
        remaining = remaining - above
        top = chosen - _BINS // 2 if prefix is None else chosen
        prefix = top if prefix is None else (prefix << _DIGIT_BITS) | top
    return _unsortable(prefix)


_SAMPLE = 8192  # values sampled per row
_SMALL_SAMPLE = 2048  # values sampled per row of fewer than _LARGE (its fixed cost dominates there)
_LARGE = 1 << 18
_SPREAD = 6.0  # standard deviations of the sample's rank error below the k-th largest the bound allows
_WHOLE = 8 * _SMALL_SAMPLE  # rows up to this length are selected whole: sampling them saves nothing
_TIES = 2  # more than this many times k values at or above the bound: look for a tie at the bound


def _sample_size(m: int) -> int:
    return _SAMPLE if m >= _LARGE else _SMALL_SAMPLE


@lru_cache(maxsize=64)
def _sample_index(m: int, device: torch.device) -> Tensor:
    """:func:`_sample_size` positions spread over ``m`` by Knuth's multiplicative hash (no
    stride that could alias with a feature map's rows or channels)."""
    return ((torch.arange(_sample_size(m), dtype=torch.int64) * 2654435761) % m).to(device)


def _topk_kth_largest(values: Tensor, k: int) -> Tensor:
    return values.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)


def _sample_rank(m: int, k: int) -> int:
    """The rank in the sample whose value bounds the k-th largest of ``m`` values from below."""
    q, size = k / m, _sample_size(m)
    return math.ceil(q * size + _SPREAD * math.sqrt(size * q * (1 - q))) + 1


def _sampled_rows(values: Tensor, k: int) -> list[tuple[float, bool]]:
    """Per row of ``values`` (N, M) fp32 on the CPU: its k-th largest value, exactly, and
    whether every value of the row reaches it (the filter then passes the row on as it is).

    A sample's ``j``-th largest value, ``j`` being ``k``'s rank in the sample plus
    ``_SPREAD`` binomial standard deviations, lies below the k-th largest of the row almost
    surely; the k-th largest is then the k-th largest of the values at or above that bound.
    Where many values sit exactly at the bound (a ReLU map's zeros) and fewer than k lie
    above it, the bound is the k-th largest. Where the bound falls short (fewer than k
    values reach it) the row is selected whole, so the result is exact either way. The
    comparisons, counts and compaction run in numpy (on the tensor's memory), whose kernels
    for these are several times faster than torch's on the CPU; the selections run in
    ``topk``, which, unlike ``numpy.partition``, stays fast where values tie.
    """
    n, m = values.shape
    j = _sample_rank(m, k)
    if m <= _WHOLE or j >= _sample_size(m) // 2:
        return [(t, False) for t in _topk_kth_largest(values, k).view(-1).tolist()]
    bounds = _topk_kth_largest(values.index_select(1, _sample_index(m, values.device)), j).view(-1).tolist()
    rows = []
    for row, bound in zip(values.contiguous(), bounds):
        flat = row.numpy()
        cut = np.float32(bound)
        keep = np.greater_equal(flat, cut)
        count = int(np.count_nonzero(keep))
        if count < k:
            rows.append((_topk_kth_largest(row, k).item(), False))
            continue
        if count > _TIES * k:
            keep = np.greater(flat, cut)
            if np.count_nonzero(keep) < k:
                rows.append((bound, count == m))
                continue
        rows.append((_topk_kth_largest(torch.from_numpy(flat[keep]), k).item(), False))
    return rows


def _sampled_kth_largest(values: Tensor, k: int) -> Tensor:
    """Per row of ``values`` (N, M), the k-th largest value, exactly, as (N, 1) (:func:`_sampled_rows`)."""
    rows = _sampled_rows(values.cpu(), k)
    return torch.tensor([[t] for t, _ in rows], dtype=torch.float32, device=values.device)


def kth_largest(values: Tensor, k: int, method: SelectMethod = "auto") -> Tensor:
    """The k-th largest value of each row of ``values`` (N, M), as (N, 1) in fp32.

    ``method`` is ``topk``, ``radix`` (capturable in a CUDA graph), ``sample`` or ``auto``
    (sample on the CPU, radix elsewhere). All are exact; values must not be NaN.
    """
    _check_method(method)
    if not 1 <= k <= values.shape[1]:
        raise ValueError(f"k={k} is outside [1, {values.shape[1]}]")
    values = values.float()
    if method == "auto":
        method = "sample" if values.device.type == "cpu" else "radix"
    if method == "topk":
        return _topk_kth_largest(values, k)
    if method == "sample":
        return _sampled_kth_largest(values, k)
    return _radix_kth_largest(values, k)


class RelevanceFilter:
    """Callable ``R -> R`` keeping the top ``top_k`` fraction per sample.

    ``mode="signed"`` ranks values (the reference behaviour, which drops negative
    relevance first); ``"magnitude"`` ranks |values|, keeping strong evidence of either
    sign, which suits signed presets. ``method`` picks how the threshold is found (see
    :func:`kth_largest`); every method keeps the same values.
    """

    def __init__(self, top_k: float, mode: FilterMode = "signed", method: SelectMethod = "auto"):
        if not 0.0 <= top_k <= 1.0:
            raise ValueError(f"top_k must be in [0, 1], got {top_k}")
        if mode not in ("signed", "magnitude"):
            raise ValueError(f"filter mode must be 'signed' or 'magnitude', got {mode!r}")
        _check_method(method)
        self.top_k = top_k
        self.mode = mode
        self.method = method

    @property
    def active(self) -> bool:
        """False for ``top_k`` 0 or 1, which keep everything."""
        return 0.0 < self.top_k < 1.0

    def __call__(self, relevance: Tensor) -> Tensor:
        flat = relevance.flatten(1)
        k = max(1, int(self.top_k * flat.shape[1]))
        key = flat.abs() if self.mode == "magnitude" else flat
        if _on_host(flat) and self.method in ("auto", "sample"):
            if flat.shape[1] <= _WHOLE:  # selected whole: one mask costs less than the rows' bookkeeping (~70 us)
                return (flat * (key >= _topk_kth_largest(key, k))).view_as(relevance)
            return _keep_at_least(flat, _sampled_rows(key, k), self.mode).view_as(relevance)
        threshold = kth_largest(key, k, self.method)
        return (flat * (key >= threshold)).view_as(relevance)


def _on_host(flat: Tensor) -> bool:
    """Whether the filter may take the CPU's path: fp32 on the CPU, outside autograd."""
    return flat.device.type == "cpu" and flat.dtype == torch.float32 and not (
        flat.requires_grad and torch.is_grad_enabled())


def _keep_at_least(flat: Tensor, rows: list[tuple[float, bool]], mode: FilterMode) -> Tensor:
    """``flat`` (N, M) fp32 with each row's values (their magnitudes in ``magnitude`` mode)
    below its threshold set to zero, in one pass per row: ``threshold`` and ``hardshrink``
    keep what lies strictly above the largest fp32 below the threshold, which is what
    reaches the threshold. A row that keeps every value is passed on as it is."""
    if all(whole for _, whole in rows):
        return flat
    below = torch.nextafter(torch.tensor([t for t, _ in rows]), torch.tensor(-math.inf)).tolist()
    out = torch.empty_like(flat)
    for row, dst, cut, (_, whole) in zip(flat, out, below, rows):
        if whole:
            dst.copy_(row)
        elif mode == "magnitude":
            torch.ops.aten.hardshrink.out(row, cut, out=dst)
        else:
            torch.threshold(row, cut, 0.0, out=dst)
    return out
