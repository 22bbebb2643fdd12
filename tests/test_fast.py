"""The fast path and the radix-select filter: same results as the plain paths, on the CPU and on CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from media import frame_for, read_video, tiny_card, tiny_model, write_video

from realtime_lrp.apps.video import process_video
from realtime_lrp.lrp.engine import LRP
from realtime_lrp.lrp.filter import RelevanceFilter, kth_largest
from realtime_lrp.pipeline.fast import CapturedCall, FastProcessor
from realtime_lrp.pipeline.processor import FrameProcessor, ProcessingError
from realtime_lrp.pipeline.stream import StableScale, percentile_rows

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def values(kind: str, n: int, m: int, seed: int) -> torch.Tensor:
    """Test data for the selection: wide magnitudes, many ties, zeros, -0.0, negatives."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g) * 10.0 ** torch.randint(-30, 30, (n, 1), generator=g).float()
    if kind == "fp16":
        x = (torch.randn(n, m, generator=g) * 100).half().float()
    elif kind == "bf16":
        x = x.bfloat16().float()
    elif kind == "zeros":
        x[torch.rand(n, m, generator=g) < 0.6] = 0.0
        x[:, ::5] = -0.0
    elif kind == "negative":
        x = -x.abs()
    elif kind == "few":
        x = torch.randint(-3, 4, (n, m), generator=g).float()
    return x


@pytest.mark.parametrize("kind", ["normal", "fp16", "bf16", "zeros", "negative", "few"])
def test_radix_select_equals_topk(kind: str) -> None:
    for seed, m in enumerate([1, 7, 50, 300, 5003]):
        x = values(kind, 2, m, seed)
        for k in {1, max(1, m // 50), max(1, m // 2), m}:
            assert torch.equal(kth_largest(x, k, "radix"), kth_largest(x, k, "topk")), (kind, m, k)
            assert torch.equal(kth_largest(x, k, "radix").view(-1), x.topk(k, dim=1).values[:, -1])


@pytest.mark.parametrize("mode", ["signed", "magnitude"])
@pytest.mark.parametrize("kind", ["normal", "fp16", "bf16", "zeros", "few"])
def test_radix_filter_keeps_what_topk_scatter_keeps(mode: str, kind: str) -> None:
    """Every value topk + scatter keeps is kept; any extra is a tie with the k-th value."""
    r = values(kind, 2, 4 * 9 * 11, 3).view(2, 4, 9, 11)
    for top_k in (0.001, 0.02, 0.3):
        flat = r.flatten(1)
        key = flat.abs() if mode == "magnitude" else flat
        k = max(1, int(top_k * flat.shape[1]))
        idx = key.topk(k, dim=1).indices
        reference = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx))
        fast = RelevanceFilter(top_k, mode, method="radix")(r).flatten(1)
        kept_by_reference = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
        assert torch.equal(fast[kept_by_reference], flat[kept_by_reference])
        extra = (fast != reference) & ~kept_by_reference
        kth = key.topk(k, dim=1).values[:, -1:].expand_as(key)
        assert torch.equal(key[extra], kth[extra])
        assert torch.equal(fast, RelevanceFilter(top_k, mode, method="topk")(r).flatten(1))


def test_each_method_runs_its_own_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """``radix`` runs the radix select, ``topk`` and ``auto`` on the CPU do not (auto takes topk
    there); a filter passes its method on."""
    from realtime_lrp.lrp import filter as filter_module

    calls: list[int] = []
    radix = filter_module._radix_kth_largest
    monkeypatch.setattr(filter_module, "_radix_kth_largest", lambda v, k: calls.append(k) or radix(v, k))
    x = values("normal", 2, 60, 0)
    kth_largest(x, 5, "topk")
    kth_largest(x, 5, "auto")
    assert calls == []
    kth_largest(x, 5, "radix")
    RelevanceFilter(0.1, method="radix")(x.view(2, 3, 4, 5))
    assert calls == [5, 6]


def test_negative_zero_is_zero_to_the_radix_select() -> None:
    """-0.0 and +0.0 get one key, and keys map back to the values (zeros as +0.0)."""
    from realtime_lrp.lrp.filter import _sortable, _unsortable

    x = values("zeros", 2, 300, 1)
    keys = _sortable(x)
    assert torch.equal(_sortable(torch.tensor([-0.0])), _sortable(torch.tensor([0.0])))
    back = _unsortable(keys)
    assert torch.equal(back, x) and not torch.signbit(back[x == 0]).any()
    assert torch.equal(keys.sort(dim=1, stable=True).indices, x.sort(dim=1, stable=True).indices), "keys sort as the values do"


def test_select_method_is_checked() -> None:
    with pytest.raises(ValueError, match="select method must be one of auto, topk, radix, sample, got 'sort'"):
        RelevanceFilter(0.1, method="sort")
    with pytest.raises(ValueError, match="outside"):
        kth_largest(torch.zeros(1, 4), 5)


def test_engine_maps_equal_with_either_selection() -> None:
    model = tiny_model(3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = {}
    for method in ("topk", "radix"):
        lrp = LRP(model, preset="epsilon-plus-flat", top_k=0.05)
        lrp.filter.method = method
        maps[method] = lrp(x).relevance
    assert maps["topk"].abs().sum() > 0
    assert torch.equal(maps["topk"], maps["radix"])


def test_percentile_rows_equals_numpy() -> None:
    x = torch.rand(3, 1001, generator=torch.Generator().manual_seed(1)) ** 4
    for q in (0.0, 50.0, 99.5, 100.0):
        ours = percentile_rows(x, q).numpy()
        ref = np.percentile(x.numpy().astype(np.float64), q, axis=1)
        np.testing.assert_allclose(ours, ref, rtol=1e-6)


def processors(channels: int, size: int = 32, **options) -> tuple[FrameProcessor, FastProcessor]:
    card = tiny_card(channels, size)
    plain = FrameProcessor(tiny_model(channels), card, device="cpu", **options)
    fast = FastProcessor(FrameProcessor(tiny_model(channels), card, device="cpu", **options))
    return plain, fast


@pytest.mark.parametrize("layout", ["overlay", "side", "heatmap"])
def test_fast_renders_what_the_plain_processor_renders(layout: str) -> None:
    """At the processing size nothing is resized, so the two paths must agree to the pixel."""
    plain, fast = processors(3, top_k=0.05, layout=layout)
    for start in (0, 3):  # two batches: the running colour scale carries over
        frames = [frame_for(i, (32, 32)) for i in range(start, start + 3)]
        a, pa = plain.process(frames)
        b, pb = fast.process(frames)
        assert [p.label for p in pa] == [p.label for p in pb]
        for x, y in zip(a, b):
            assert x.shape == y.shape == ((32, 64, 3) if layout == "side" else (32, 32, 3))
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
    assert fast.scale.value.item() == pytest.approx(plain.scale.value, rel=1e-5)


def test_fast_resizes_and_converts_to_gray_like_the_plain_processor() -> None:
    """Odd frame size, 1-channel model: the GPU resize keeps fractions OpenCV rounds, so close, not equal."""
    plain, fast = processors(1, top_k=0.0, cmap="hot")
    frames = [frame_for(i, (45, 37)) for i in range(2)]
    a, pa = plain.process(frames)
    b, pb = fast.process(frames)
    assert [p.index for p in pa] == [p.index for p in pb]
    for p, q in zip(pa, pb):
        assert abs(p.probability - q.probability) < 0.01
    for x, y in zip(a, b):
        assert x.shape == y.shape == (37, 45, 3)
        diff = np.abs(x.astype(int) - y.astype(int))
        assert (diff > 8).mean() < 0.02


def test_stills_are_scaled_each_on_its_own_and_leave_the_stream_alone() -> None:
    """One batch of stills renders each frame as a fresh stream renders it as its first frame;
    the stream's own state is not touched."""
    plain, fast = processors(3, top_k=0.05)
    frames = [frame_for(i, (32, 32)) for i in range(3)]
    fast.process(frames[:1])
    before = fast.scale.value.clone()
    stills, _ = fast.process(frames, stable=False)
    for frame, still in zip(frames, stills):
        fresh = FastProcessor(FrameProcessor(tiny_model(3), tiny_card(3), device="cpu", top_k=0.05))
        assert np.array_equal(fresh.process([frame])[0][0], still)
    assert torch.equal(fast.scale.value, before)
    scale = StableScale.frame_scale(torch.from_numpy(plain.explain(frames[:1])[0]))
    assert before.item() == pytest.approx(scale.item(), rel=1e-5)


def test_settings_changes_build_new_passes() -> None:
    _, fast = processors(3, top_k=0.05)
    frames = [frame_for(0, (32, 32))]
    overlay = fast.process(frames)[0][0]
    fast.processor.layout = "side"
    side = fast.process(frames)[0][0]
    assert overlay.shape == (32, 32, 3) and side.shape == (32, 64, 3)
    fast.processor.top_k = 0.0
    unfiltered = fast.process(frames)[0][0]
    assert not np.array_equal(unfiltered[:, 32:], side[:, 32:])


def test_mixed_frame_sizes_are_refused() -> None:
    _, fast = processors(3)
    with pytest.raises(ProcessingError, match="one size"):
        fast.process([frame_for(0, (32, 32)), frame_for(1, (40, 32))])


def test_fast_path_in_the_video_pipeline(tmp_path) -> None:
    """The real three-stage pipeline with the fast processor: every frame, fps and size kept."""
    src = tmp_path / "in.mp4"
    write_video(src, 9, (46, 38), 23.976)
    _, fast = processors(1, top_k=0.05)
    result = process_video(src, tmp_path / "out.avi", fast, batch=4)
    frames, fps = read_video(tmp_path / "out.avi")
    assert result.frames == len(frames) == 9
    assert frames[0].shape == (38, 46, 3)
    assert fps == pytest.approx(23.976, rel=1e-3)


def test_captured_call_runs_eagerly_on_the_cpu() -> None:
    x = torch.arange(4.0)
    call = CapturedCall(lambda t: t * 2, [x])
    assert not call.graphed
    x.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(call(), torch.tensor([2.0, 4.0, 6.0, 8.0]))


@pytest.mark.cuda
@needs_cuda
def test_graph_replay_follows_new_input_on_cuda() -> None:
    x = torch.zeros(1000, device="cuda")
    call = CapturedCall(lambda t: kth_largest(t.view(4, 250), 10, "radix"), [x])
    assert call.graphed
    for seed in range(3):
        data = torch.randn(1000, generator=torch.Generator().manual_seed(seed)).cuda()
        x.copy_(data)
        assert torch.equal(call(), kth_largest(data.view(4, 250).cpu(), 10, "topk").cuda())


@pytest.mark.cuda
@needs_cuda
def test_failed_capture_falls_back_and_says_so() -> None:
    notices: list[str] = []
    x = torch.ones(3, device="cuda")
    call = CapturedCall(lambda t: t * float(t.sum().item()), [x], notice=notices.append)
    assert not call.graphed and "eagerly" in notices[0]
    assert torch.equal(call(), torch.full((3,), 3.0, device="cuda"))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("top_k", [0.0, 0.05])
def test_cuda_graph_pass_equals_eager_pass(top_k: float) -> None:
    """fp16, channels_last, one CUDA graph per shape: same pixels as the same pass run eagerly."""
    card = tiny_card(3, 64)
    frames = [frame_for(i, (80, 60)) for i in range(4)]
    outs = {}
    for graph in (True, False):
        notices: list[str] = []
        fast = FastProcessor(FrameProcessor(tiny_model(3), card, device="cuda", top_k=top_k), graph=graph,
                             notice=notices.append)
        outs[graph] = [fast.process(frames[i:i + 2]) for i in (0, 2)]
        assert not notices
        assert all(pass_.call.graphed == graph for pass_ in fast._passes.values())
    for (a, pa), (b, pb) in zip(outs[True], outs[False]):
        assert [p.label for p in pa] == [p.label for p in pb]
        for x, y in zip(a, b):
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


@pytest.mark.cuda
@needs_cuda
def test_cuda_fast_path_is_close_to_the_cpu() -> None:
    """fp16 on CUDA against fp32 on the CPU: the rendered frames differ by rounding only."""
    card = tiny_card(3, 32)
    frames = [frame_for(i, (32, 32)) for i in range(2)]
    fast = FastProcessor(FrameProcessor(tiny_model(3), card, device="cuda", top_k=0.0))
    rendered, _ = fast.process(frames)
    plain = FrameProcessor(tiny_model(3), card, device="cpu", top_k=0.0).process(frames)[0]
    for x, y in zip(rendered, plain):
        assert np.abs(x.astype(int) - y.astype(int)).mean() < 2.0


def test_pass_with_copies_outside_the_graph_renders_the_same() -> None:
    """The fallback used when a graph cannot hold the copies: upload, device part, download."""
    _, whole = processors(3, top_k=0.05)
    _, split = processors(3, top_k=0.05)
    frames = [frame_for(i, (32, 32)) for i in range(2)]
    expected, _ = whole.process(frames)
    split.process(frames[:1] * 2)
    split.reset()
    (pass_,) = split._passes.values()
    pass_.copies_outside = True
    pass_.call = CapturedCall(pass_._compute, [pass_.dev_in, pass_.dev_valid])
    rendered, _ = split.process(frames)
    assert all(np.array_equal(a, b) for a, b in zip(expected, rendered))


def test_pass_cache_keeps_the_most_recent_shapes_and_settings() -> None:
    """With room for two passes, a third shape evicts the least recently used one; a pass used
    again is kept; an evicted shape is rebuilt and renders what it rendered before."""
    _, fast = processors(3, top_k=0.05)
    fast.cache = 2
    sizes = [(32, 32), (40, 32), (48, 32)]

    def shapes() -> list[tuple[int, int, int]]:
        return [key[:3] for key in fast._passes]

    first = {size: fast.process([frame_for(1, size)], stable=False)[0][0] for size in sizes}
    assert shapes() == [(1, 32, 40), (1, 32, 48)]
    kept = fast._passes[next(iter(fast._passes))]
    fast.process([frame_for(1, (40, 32))], stable=False)
    assert shapes() == [(1, 32, 48), (1, 32, 40)] and fast._passes[next(reversed(fast._passes))] is kept
    again = fast.process([frame_for(1, (32, 32))], stable=False)[0][0]
    assert shapes() == [(1, 32, 40), (1, 32, 32)]
    assert np.array_equal(again, first[(32, 32)])
    fast.processor.cmap = "inferno"  # another setting is another pass
    fast.process([frame_for(1, (32, 32))], stable=False)
    assert [key[:3] + key[6:7] for key in fast._passes] == [(1, 32, 32, "signed"), (1, 32, 32, "inferno")]


def test_an_empty_batch_renders_nothing_and_builds_nothing() -> None:
    _, fast = processors(3, top_k=0.05)
    assert fast.process([]) == ([], [])
    assert fast.process([], stable=False) == ([], [])
    assert not fast._passes and not fast.scale.seen.item()


def test_gray_and_bgra_frames_render_like_their_bgr_frame() -> None:
    """The fast path takes 2-D and one-channel gray and BGRA frames as the BGR frame they show."""
    _, fast = processors(3, top_k=0.0)
    gray = frame_for(2, (32, 32))[:, :, 1].copy()
    bgra = np.concatenate([frame_for(3, (32, 32)), np.full((32, 32, 1), 9, np.uint8)], axis=2)
    expected = [np.repeat(gray[:, :, None], 3, axis=2)] * 2 + [frame_for(3, (32, 32))]
    for frame, bgr in zip((gray, gray[:, :, None], bgra), expected):
        assert np.array_equal(fast.process([frame], stable=False)[0][0], fast.process([bgr], stable=False)[0][0])


def test_fast_gray_conversion_uses_bt601_weights_on_bgr() -> None:
    """The device-side gray conversion of a 1-channel model: 0.299 R + 0.587 G + 0.114 B."""
    _, fast = processors(1, top_k=0.0)
    frame = np.empty((32, 32, 3), np.uint8)
    frame[:] = (200, 100, 50)  # B, G, R
    fast.process([frame])
    (pass_,) = fast._passes.values()
    x = pass_._compute.preprocess(torch.from_numpy(frame)[None])
    luma = 0.299 * 50 + 0.587 * 100 + 0.114 * 200
    mean, std = tiny_card(1)["mean"][0], tiny_card(1)["std"][0]
    torch.testing.assert_close(x, torch.full((1, 1, 32, 32), (luma / 255 - mean) / std))


@pytest.mark.parametrize("fast_path", [False, True])
def test_label_names_the_explained_class_when_it_is_not_the_top_class(fast_path: bool) -> None:
    frame = frame_for(4, (32, 32))
    top = FrameProcessor(tiny_model(3), tiny_card(3), device="cpu").explain([frame])[1][0]
    other = (top.index + 3) % 10
    classes = tiny_card(3)["classes"]
    for target, suffix in ((None, ""), (top.index, ""), (other, f"  [LRP: {classes[other]}]")):
        proc = FrameProcessor(tiny_model(3), tiny_card(3), device="cpu", target=target)
        (pred,) = FastProcessor(proc).process([frame])[1] if fast_path else proc.explain([frame])[1]
        assert (pred.index, pred.explained) == (top.index, top.index if target is None else target)
        assert pred.label == f"{classes[top.index]}  {100 * pred.probability:.1f}%{suffix}"


def test_fit_is_said_once_per_frame_size_and_crop_shows_the_centre() -> None:
    notices: list[str] = []
    proc = FrameProcessor(tiny_model(3), tiny_card(3), device="cpu", fit="crop", top_k=0.0, notice=notices.append)
    wide = frame_for(1, (128, 64))
    for _ in range(2):
        out = proc.process([wide])[0][0]
    proc.process([frame_for(1, (32, 32))])
    assert notices == ["--fit crop: the model sees the centre 64x64 of the 128x64 frames (resized to 32x32);"
                       " the rest is dimmed. --fit pad shows it all, --size WxH sets the aspect"]
    below = slice(40, None)  # below the label
    assert np.array_equal(out[below, :32], wide[below, :32] // 2)
    assert np.array_equal(out[below, 96:], wide[below, 96:] // 2)
    centre = proc.explain([wide[:, 32:96]], stream=False)[1][0]
    assert proc.process([wide], stable=False)[1][0].probability == pytest.approx(centre.probability, rel=1e-5)


def test_a_partial_batch_runs_padded_in_the_captured_pass_and_its_padding_is_discarded() -> None:
    """With graphs on (forced here; the CPU runs the pass eagerly either way), the last batch of 2
    runs in the pass built for 4: no new pass, the same pixels, labels and stream state as a run
    that builds a pass per batch size."""
    frames = [frame_for(i, (32, 32)) for i in range(6)]
    runs = {}
    for graph in (True, False):
        fast = FastProcessor(FrameProcessor(tiny_model(3), tiny_card(3), device="cpu", top_k=0.05, smooth=0.5),
                             graph=graph)
        out = fast.process(frames[:4])[0] + fast.process(frames[4:])[0]
        runs[graph] = (out, [key[0] for key in fast._passes], fast.scale.value.clone(), fast.smoother.value.clone())
    (padded, sizes, scale, smooth), (plain, plain_sizes, plain_scale, plain_smooth) = runs[True], runs[False]
    assert sizes == [4] and plain_sizes == [4, 2]
    assert len(padded) == 6 and all(np.array_equal(a, b) for a, b in zip(padded, plain))
    torch.testing.assert_close(scale, plain_scale, rtol=1e-5, atol=0)  # the maps' scale is ~1e-7
    torch.testing.assert_close(smooth, plain_smooth, rtol=1e-5, atol=0)


@pytest.mark.cuda
@needs_cuda
def test_captured_passes_share_one_memory_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime_lrp.pipeline import fast as fast_module

    pools = []
    graph = torch.cuda.graph

    def spy(cuda_graph, pool=None, **kwargs):
        pools.append(pool)
        return graph(cuda_graph, pool=pool, **kwargs)

    monkeypatch.setattr(torch.cuda, "graph", spy)
    fast = FastProcessor(FrameProcessor(tiny_model(3), tiny_card(3, 64), device="cuda"))
    fast.process([frame_for(0, (80, 60))])
    fast.process([frame_for(0, (64, 48))] * 2)
    assert len(pools) == 2 and pools[0] is not None and pools[0] == pools[1] == fast_module.shared_pool()
