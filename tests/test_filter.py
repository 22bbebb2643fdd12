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
    elif kind == "sorted":  # structure a strided sample would alias with
        x = torch.arange(m, dtype=torch.float32).remainder(224).expand(n, m).contiguous()
    return x


@pytest.mark.parametrize("kind", ["normal", "relu", "negative", "few", "fp16", "sorted"])
def test_sampled_select_equals_topk(kind: str) -> None:
    for seed, m in enumerate([40_000, 100_003]):
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
    sampled = filter_module._sample_index(m, torch.device("cpu"))
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
