"""rtlrp bench: rows, ratios, the zennit reference, the video stages, and its errors."""
from __future__ import annotations

import json
import sys
import threading

import pytest
import torch
from click.testing import CliRunner
from media import frame_for, model_file, tiny_card, tiny_model, write_video

from realtime_lrp.apps import bench
from realtime_lrp.cli import cli
from realtime_lrp.lrp.engine import LRP
from realtime_lrp.models.architectures import build_model
from realtime_lrp.pipeline.fast import FastProcessor
from realtime_lrp.pipeline.processor import FrameProcessor

REQUIRED = ("size", "batch", "dtype", "top_k", "preset", "engine_ms", "floor_ms", "zennit_ms")


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def quick(**overrides) -> bench.BenchConfig:
    options = dict(sizes=(32,), batches=(1,), top_ks=(0.0, 0.05), presets=("epsilon-plus-flat",),
                   device="cpu", repeats=2, warmup=0)
    options.update(overrides)
    return bench.BenchConfig(**options)


class FakeClock:
    """``time.perf_counter`` for the bench: it moves only when a timed call says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        with self.lock:
            self.now += ms / 1000.0


def costing(clock: FakeClock, ms: float, fn):
    """``fn`` that takes ``ms`` milliseconds on ``clock``."""
    def call(*args, **kwargs):
        clock.advance(ms)
        return fn(*args, **kwargs)
    return call


def test_rows_have_the_keys_and_consistent_ratios(monkeypatch) -> None:
    """Each call costs a known time on a fake clock (engine 30 ms unfiltered and 45 ms filtered,
    floor 10 ms, zennit 90 ms, autoLRP 120 ms, frame pass 60 ms): every row reports those times
    and their ratios."""
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    engine_ms = {0.0: 30.0, 0.05: 45.0}

    def engine_call(lrp, x, graph, notice=None):
        return costing(clock, engine_ms[lrp.top_k], real_engine(lrp, x, graph, notice))

    def frame_pass(model, card, preset, top_k, *args):
        return costing(clock, 60.0, real_pass(model, card, preset, top_k, *args))

    real_engine, real_floor, real_pass = bench.engine_call, bench.floor_call, bench._frame_pass
    monkeypatch.setattr(bench, "engine_call", engine_call)
    monkeypatch.setattr(bench, "floor_call", lambda *a, **k: costing(clock, 10.0, real_floor(*a, **k)))
    monkeypatch.setattr(bench, "_frame_pass", frame_pass)
    monkeypatch.setattr(bench._ZennitCall, "__call__", costing(clock, 90.0, bench._ZennitCall.__call__))
    real_autolrp = bench.autolrp_call
    monkeypatch.setattr(bench, "autolrp_call", lambda *a: costing(clock, 120.0, real_autolrp(*a)))
    seen = []
    rows = bench.bench_model(tiny_model(3), tiny_card(3), quick(batches=(1, 2)), on_row=seen.append)
    assert seen == rows and len(rows) == 4
    assert {(r["batch"], r["top_k"]) for r in rows} == {(1, 0.0), (1, 0.05), (2, 0.0), (2, 0.05)}
    for r in rows:
        assert set(REQUIRED) <= set(r)
        assert r["dtype"] == "fp32" and r["device"] == "cpu" and r["graph"] is False
        assert r["peak_mem_mib"] is None
        engine = engine_ms[r["top_k"]]
        assert (r["engine_ms"], r["floor_ms"], r["zennit_ms"], r["autolrp_ms"], r["pass_ms"]) == pytest.approx(
            (engine, 10, 90, 120, 60))
        assert r["engine_over_floor"] == pytest.approx(engine / 10)
        assert r["zennit_over_engine"] == pytest.approx(90 / engine)
        assert r["autolrp_over_engine"] == pytest.approx(120 / engine)
        assert set(r) == set(bench.ROW_KEYS)
        assert r["engine_fps"] == pytest.approx(1000 * r["batch"] / engine)
    json.dumps(rows)


def test_the_engine_is_built_from_the_callers_weights_as_the_pipeline_builds_it(monkeypatch) -> None:
    """bf16 rows time an engine canonised from the fp32 model (which reads DenseNet's batch-norm signs,
    on the CPU, before the cast), and the caller's model is not cast in place; the floor runs in bf16."""
    built, floors = [], []
    real_lrp, real_floor = bench.LRP, bench.floor_call

    def lrp(model, **kwargs):
        built.append((next(model.parameters()).dtype, kwargs["dtype"]))
        return real_lrp(model, **kwargs)

    def floor_call(model, *args, **kwargs):
        floors.append(next(model.parameters()).dtype)
        return real_floor(model, *args, **kwargs)

    monkeypatch.setattr(bench, "LRP", lrp)
    monkeypatch.setattr(bench, "floor_call", floor_call)
    model = tiny_model(3)
    bench.bench_model(model, tiny_card(3), quick(dtype="bf16", top_ks=(0.0,), frame_pass=False, zennit=False,
                                                 autolrp=False))
    assert built == [(torch.float32, torch.bfloat16)] and floors == [torch.bfloat16]
    assert next(model.parameters()).dtype == torch.float32


def test_zennit_is_null_without_an_equivalent_or_without_zennit(monkeypatch) -> None:
    rows = bench.bench_model(tiny_model(3), tiny_card(3), quick(presets=("zplus",), top_ks=(0.0,),
                                                                  frame_pass=False))
    assert rows[0]["zennit_ms"] is None and rows[0]["zennit_over_engine"] is None
    monkeypatch.setitem(sys.modules, "zennit", None)  # import zennit now raises ImportError
    assert bench.zennit_call(tiny_model(3), "epsilon-plus-flat") is None


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box"])
def test_zennit_call_is_the_equivalent_preset(preset: str) -> None:
    """What the bench times for zennit explains the same thing as the engine."""
    card = tiny_card(3)
    model = tiny_model(3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = LRP(model, preset=preset, mean=card["mean"], std=card["std"])(x).relevance
    call = bench.zennit_call(model, preset, card["mean"], card["std"])
    with call.context() as modified:
        call.modified = modified
        theirs = call(x).detach()
    error = (ours - theirs).flatten(1).abs().amax(1) / theirs.flatten(1).abs().amax(1)
    assert (error < 1e-3).all(), error


def test_floor_is_the_input_gradient_of_the_top_logit() -> None:
    model = tiny_model(3)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    grad = bench.floor_call(model, x, graph=False)()
    ref = x.clone().requires_grad_(True)
    logits = model(ref)
    logits[0, logits.argmax()].backward()
    torch.testing.assert_close(grad, ref.grad)


def test_time_ms_interleaves_and_counts_calls() -> None:
    order = []
    ms = bench.time_ms({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                       torch.device("cpu"), repeats=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())


def test_cli_table_and_json(tmp_path) -> None:
    weights = model_file(tmp_path, channels=3)
    out = tmp_path / "rows.json"
    result = run("bench", "--weights", weights, "--device", "cpu", "--sizes", "32", "--batch", "1",
                 "--top-k", "0,0.05", "--repeats", "1", "--warmup", "0", "--json", out)
    assert result.exit_code == 0, result.output
    assert "LRP/floor" in result.output and "zennit" in result.output and "autoLRP" in result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    payload = json.loads(out.read_text())
    assert [r["top_k"] for r in payload["rows"]] == [0.0, 0.05]
    assert all(set(REQUIRED) <= set(r) for r in payload["rows"])
    assert payload["environment"]["torch"] == torch.__version__ and payload["video"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback when CUDA is missing")
def test_cli_without_cuda_falls_back_to_the_cpu(tmp_path) -> None:
    weights = model_file(tmp_path, channels=1)
    result = run("bench", "--weights", weights, "--device", "auto", "--sizes", "32", "--top-k", "0",
                 "--repeats", "1", "--warmup", "0", "--no-zennit", "--no-frame-pass")
    assert result.exit_code == 0, result.output
    assert "CUDA is not available" in result.output and "fp32" in result.output


def test_video_stages_and_end_to_end(tmp_path, monkeypatch) -> None:
    """On a fake clock, decoding costs 2 ms a frame, processing 20 ms and encoding 5 ms: each stage
    alone runs at 500, 50 and 200 frames/s, and the pipeline, whose stages all tick the same clock
    here, at 1000 / 27 frames/s, 0.74 of its slowest stage."""
    from realtime_lrp.media import reader, writer

    src = tmp_path / "clip.mp4"
    write_video(src, 12, (46, 38), 29.97)
    fast = FastProcessor(FrameProcessor(tiny_model(1), tiny_card(1), device="cpu", top_k=0.05))
    fast.process([frame_for(0, (46, 38))] * 2)  # built before the clock is faked
    clock = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    decode = reader.VideoReader.frames

    def frames(self):
        for frame in decode(self):
            clock.advance(2.0)
            yield frame

    monkeypatch.setattr(reader.VideoReader, "frames", frames)
    monkeypatch.setattr(writer.VideoWriter, "write", costing(clock, 5.0, writer.VideoWriter.write))
    process = fast.process
    monkeypatch.setattr(fast, "process", lambda batch, *a: costing(clock, 20.0 * len(batch), process)(batch, *a))
    result = bench.bench_video(src, fast, batch=2, keep=6)
    assert result.frames == 12 and result.size == (46, 38)
    assert result.decode_fps == pytest.approx(500)
    assert result.process_fps == pytest.approx(50)
    assert result.encode_fps == pytest.approx(200)
    assert result.end_to_end_fps == pytest.approx(1000 / 27)
    assert result.overlap == pytest.approx(1000 / 27 / 50)
    assert result.slowest_stage == result.as_dict()["slowest_stage"] == "process"


def test_cli_video(tmp_path) -> None:
    src = tmp_path / "clip.mp4"
    write_video(src, 8, (46, 38), 12.5)
    weights = model_file(tmp_path, channels=1)
    out = tmp_path / "video.json"
    threads = torch.get_num_threads()
    try:
        result = run("bench", "--weights", weights, "--device", "cpu", "--video", src, "--frames", "4",
                     "--top-k", "0.05", "--plain", "--threads", "1", "--json", out)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    for stage in ("decode alone", "process alone", "encode alone", "end to end"):
        assert stage in result.output
    video = json.loads(out.read_text())["video"]
    assert video["frames"] == 8 and video["processor"] == "FrameProcessor"


@pytest.mark.parametrize("args, message", [
    (["--video", "missing.mp4"], "no such file"),
    (["--preset", "nonsense"], "unknown preset"),
    (["--top-k", "2"], "top-k"),
    (["--sizes", "a,b"], "comma-separated"),
])
def test_cli_errors_are_one_line(tmp_path, args, message) -> None:
    weights = model_file(tmp_path, channels=1)
    args = [str(tmp_path / a) if a.endswith(".mp4") else a for a in args]
    result = run("bench", "--weights", weights, "--device", "cpu", *args)
    assert result.exit_code in (1, 2)
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith(("Usage", "Try"))]
    assert len(lines) == 1 and message in lines[0], result.output


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rows_use_graphs_fp16_and_report_memory() -> None:
    rows = bench.bench_model(tiny_model(3), tiny_card(3), quick(device="cuda", repeats=3, warmup=1))
    for r in rows:
        assert r["dtype"] == "fp16" and r["graph"] is True
        assert r["peak_mem_mib"] > 0 and r["pass_ms"] > 0


def test_zennit_call_on_a_resnet_uses_the_resnet_canonizer() -> None:
    """For a ResNet the timed zennit call (ResNetCanonizer) explains what the engine explains."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5).eval()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    ours = LRP(model)(x).relevance
    call = bench.zennit_call(model, "epsilon-plus-flat")
    with call.context() as modified:
        call.modified = modified
        theirs = call(x).detach()
    error = (ours - theirs).flatten(1).abs().amax(1) / theirs.flatten(1).abs().amax(1)
    assert (error < 1e-3).all(), error


def test_cli_random_resnet(tmp_path) -> None:
    out = tmp_path / "rows.json"
    result = run("bench", "--arch", "resnet18", "--device", "cpu", "--sizes", "32", "--top-k", "0",
                 "--repeats", "1", "--warmup", "0", "--no-frame-pass", "--json", out)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["rows"]
    assert row["engine_ms"] > 0 and row["zennit_ms"] > 0
    result = run("bench", "--arch", "resnet9", "--device", "cpu", "--sizes", "32")
    assert result.exit_code == 1 and "unknown architecture" in result.output


def test_autolrp_call_explains_each_sample_s_top_class() -> None:
    """The batched call seeds each sample's top logit, as autoLRP's own one-sample call does;
    autoLRP has no equivalent of epsilon-gamma-box."""
    import autolrp

    torch.manual_seed(0)
    model = build_model("vgg11", 10, 3, width=1 / 16).eval()
    x = torch.randn(3, 3, 32, 32)
    call = bench.autolrp_call(model, "epsilon-plus-flat")
    batched = call(x)
    assert batched.shape == (3, 32, 32) and bench.autolrp_call(model, "epsilon-gamma-box") is None
    for i in range(3):
        wrapped = autolrp.tensor(x[i:i + 1])
        out = model(wrapped)
        out[0, out[0].argmax()].lrp(config=autolrp.LRPConfig.composite())
        torch.testing.assert_close(batched[i], wrapped.relevance[0].sum(0), rtol=1e-4, atol=1e-6)


def test_a_reference_that_cannot_explain_the_model_leaves_its_column_empty(monkeypatch) -> None:
    def refuses(model, preset):
        def call(x):
            raise RuntimeError("derivative for aten::hardsigmoid_backward is not implemented\nmore")
        return call

    monkeypatch.setattr(bench, "autolrp_call", refuses)
    notices: list[str] = []
    rows = bench.bench_model(tiny_model(3), tiny_card(3), quick(frame_pass=False), notice=notices.append)
    assert [r["autolrp_ms"] for r in rows] == [None, None] and all(r["zennit_ms"] > 0 for r in rows)
    assert notices == ["autoLRP cannot explain this model, its column stays empty: RuntimeError: derivative for "
                       "aten::hardsigmoid_backward is not implemented"]


def test_table_fits_80_columns_with_every_column_filled() -> None:
    from rich.console import Console

    row = {"size": 1024, "batch": 32, "dtype": "fp16", "top_k": 0.02, "preset": "epsilon-gamma-box",
           "device": "cuda", "engine_ms": 1234.5, "floor_ms": 999.99, "engine_over_floor": 12.34,
           "zennit_ms": 98765.4, "autolrp_ms": 12345.6, "pass_ms": 4321.0, "peak_mem_mib": 123456.0}
    console = Console(width=200, record=True)
    console.print(bench.rows_table([row, {**row, "top_k": 0.0}], "rtlrp bench vgg16 on a GPU (date)"))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for cell in ("1234.5", "1000.0", "12.34", "98765", "12346", "4321.0", "123456", "epsilon-gamma-box, fp16"):
        assert cell in text


def test_zennit_that_fails_to_canonize_leaves_its_column_empty(monkeypatch) -> None:
    """A canonizer that raises on entry (zennit's batch-norm merge on a DenseNet did) costs the
    zennit column, not the run; a DenseNet gets no merge canonizer at all."""
    import torchvision

    def context(self):
        raise RuntimeError("The size of tensor a (32) must match the size of tensor b (96)")

    monkeypatch.setattr(bench._ZennitCall, "context", context)
    notices: list[str] = []
    rows = bench.bench_model(tiny_model(3), tiny_card(3), quick(frame_pass=False, autolrp=False),
                             notice=notices.append)
    assert [r["zennit_ms"] for r in rows] == [None, None] and all(r["engine_ms"] > 0 for r in rows)
    assert notices == ["zennit cannot explain this model, its column stays empty: RuntimeError: The size of "
                       "tensor a (32) must match the size of tensor b (96)"]
    with torch.device("meta"):
        densenet = torchvision.models.densenet121()
    assert bench.zennit_call(densenet, "epsilon-plus-flat").composite.canonizers == []
