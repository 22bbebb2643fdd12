"""The CPU's sampled selection of the filter's threshold: the same k-th largest value as ``topk``."""
from __future__ import annotations

import pytest
import torch

from realtime_lrp.lrp import filter as filter_module
from realtime_lrp.lrp.filter import RelevanceFilter, kth_largest


def _values(kind: str, n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g)
    if kind == "relu":  # most of a ReLU network's relevance is zero
        x = x.clamp(min=0) * (torch.rand(n, m, generator=g) < 0.3)
    elif kind == "negative":
        x = -x.abs()
    elif kind == "few":  # ties everywhere
        x = torch.randint(-3, 4, (n, m), generator=g).float()
    elif kind == "fp16":
        x = x.half().float()
    elif kind == "sparse":  # a filtered ReLU map: ~1 % positive, the rest zeros, so the bound ties at 0
        x = x.abs() * (torch.rand(n, m, generator=g) < 0.01)
    elif kind == "equal":
        x = torch.full((n, m), 0.25)
    elif kind == "sorted":  # structure a strided sample would alias with
        x = torch.arange(m, dtype=torch.float32).remainder(224).expand(n, m).contiguous()
    return x


KINDS = ["normal", "relu", "negative", "few", "fp16", "sorted", "sparse", "equal"]


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_select_equals_topk(kind: str) -> None:
    for seed, m in enumerate([20_000, 100_003, 300_007]):
        x = _values(kind, 3, m, seed)
        for k in {1, m // 1000, m // 50, m // 3, m}:
            assert torch.equal(kth_largest(x, k, "sample"), x.topk(k, dim=1).values[:, -1:]), (kind, m, k)


@pytest.mark.parametrize("mode", ["signed", "magnitude"])
def test_sampled_filter_keeps_what_topk_keeps(mode: str) -> None:
    r = _values("relu" if mode == "signed" else "normal", 2, 64 * 30 * 31, 5).view(2, 64, 30, 31)
    for top_k in (0.005, 0.02, 0.1):
        assert torch.equal(RelevanceFilter(top_k, mode, method="sample")(r),
                           RelevanceFilter(top_k, mode, method="topk")(r))


def test_a_sample_that_misleads_falls_back_to_the_whole_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the sampled positions hold the largest values, the bound lies above the k-th
    largest; the row is then selected whole, still exactly."""
    m, k = 100_000, 20_000
    x = torch.rand(2, m) * 0.5
    sampled = filter_module._sample_index(m, torch.device("cpu"))  # 2048 positions at this m
    x[0, sampled] = 1.0 + torch.rand(len(sampled))
    calls: list[int] = []
    topk = filter_module._topk_kth_largest
    monkeypatch.setattr(filter_module, "_topk_kth_largest", lambda v, kk: calls.append(v.shape[-1]) or topk(v, kk))
    assert torch.equal(kth_largest(x, k, "sample"), x.topk(k, dim=1).values[:, -1:])
    assert calls[1] == m and calls[2] < m // 2  # row 0 whole, row 1 among the values above its bound


def test_auto_takes_the_sampled_select_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    sampled = filter_module._sampled_rows
    monkeypatch.setattr(filter_module, "_sampled_rows", lambda v, k: calls.append(k) or sampled(v, k))
    x = _values("normal", 1, 50_000, 0)
    RelevanceFilter(0.02)(x)
    kth_largest(x, 7, "topk")
    assert calls == [1000]


@pytest.mark.parametrize("mode", ["signed", "magnitude"])
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_filter_keeps_what_the_mask_of_topk_keeps(kind: str, mode: str) -> None:
    """The CPU's path (numpy counts, one threshold/hardshrink pass) against the definition
    ``R * (key >= k-th largest key)`` with the threshold from ``topk``, batch 3, each sample
    on its own threshold; negative values, ties and zeros included."""
    r = _values(kind, 3, 64 * 40 * 41, 7).view(3, 64, 40, 41)
    r[1] *= -3.0  # a second sample of the other sign and scale
    for top_k in (0.003, 0.02, 0.3):
        flat = r.flatten(1)
        key = flat.abs() if mode == "magnitude" else flat
        k = max(1, int(top_k * flat.shape[1]))
        expected = (flat * (key >= key.topk(k, dim=1).values[:, -1:])).view_as(r)
        assert torch.equal(RelevanceFilter(top_k, mode)(r), expected), (kind, mode, top_k)


def test_a_row_that_keeps_everything_is_passed_on_and_fp16_takes_the_mask() -> None:
    """All values at the threshold (a ReLU map with fewer than k positives and no negatives)
    leave the row as it is, the same tensor; fp16 relevance gets the same values as topk."""
    r = torch.zeros(2, 64, 30, 30)
    r[:, 0, 0, :5] = torch.arange(1.0, 6.0)
    assert RelevanceFilter(0.02)(r).data_ptr() == r.data_ptr()
    half = _values("relu", 2, 64 * 30 * 30, 3).half().view(2, 64, 30, 30)
    flat = half.flatten(1)
    expected = flat * (flat >= flat.topk(1152, dim=1).values[:, -1:])
    assert torch.equal(RelevanceFilter(0.02)(half), expected.view_as(half))
