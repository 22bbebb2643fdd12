"""``rtlrp bench``: the engine's speed beside the floor, zennit, autoLRP and LXT, and the video path's stages."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from realtime_lrp.cli.group import cli
from realtime_lrp.cli.options import check_device, comma_list, default_threads, load_weights, stderr_console
from realtime_lrp.lrp.presets import PRESET_NAMES


@cli.command("bench")
@click.option("--device", default="auto", show_default=True, callback=check_device,
              help="auto, cpu, cuda or cuda:N; auto falls back to the CPU (with a notice), an explicit cuda"
                   " without CUDA is an error.")
@click.option("--sizes", default="224", show_default=True, callback=comma_list(int), metavar="N,N,...",
              help="Square input sizes, e.g. 224,448,640.")
@click.option("--batch", default="1", show_default=True, callback=comma_list(int), metavar="N,N,...",
              help="Batch sizes, e.g. 1,8,32.")
@click.option("--top-k", default="0,0.02", show_default=True, callback=comma_list(float), metavar="K,K,...",
              help="Filter fractions; 0 is unfiltered.")
@click.option("--preset", default="epsilon-plus-flat", show_default=True, callback=comma_list(str),
              metavar="NAME,...", help=f"LRP presets ({', '.join(PRESET_NAMES)}), comma-separated.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Default: fp16 on CUDA, fp32 on the CPU.")
@click.option("--arch", default="vgg16", show_default=True,
              help="Architecture with torchvision's random initialisation (speed does not depend on the "
                   "weights, but for DenseNet's batch norms: README, rtlrp bench): vgg11 ... "
                   "vgg19_bn, resnet18 ... resnet152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, "
                   "wide_resnet50_2, wide_resnet101_2, alexnet, mobilenet_v3_small, mobilenet_v3_large, "
                   "efficientnet_b0, regnet_y_400mf, regnet_y_800mf, convnext_tiny, densenet121, or a transformer: "
                   "vit_b_16, vit_b_32, vit_l_16, vit_l_32, swin_t, swin_s, swin_b, swin_v2_t, swin_v2_s, "
                   "swin_v2_b, maxvit_t (with --preset cp-lrp or attnlrp).")
@click.option("--weights", default=None, metavar="imagenet[:ARCH]|shipped|PATH",
              help="Benchmark this model instead of a random --arch.")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Timed calls per measurement (median); default 50 on CUDA, 5 on the CPU.")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Untimed calls first; default 10 / 1.")
@click.option("--graph/--no-graph", default=True, show_default=True, help="CUDA graphs on CUDA.")
@click.option("--zennit/--no-zennit", default=True, show_default=True,
              help="Also time zennit's equivalent preset (when installed).")
@click.option("--autolrp/--no-autolrp", default=True, show_default=True,
              help="Also time autoLRP's nearest configuration (when installed: pip install '.[bench]').")
@click.option("--lxt/--no-lxt", default=True, show_default=True,
              help="Also time LXT 2.1's CP-LRP (cp-lrp on a torchvision ViT, when LXT is installed).")
@click.option("--frame-pass/--no-frame-pass", default=True, show_default=True,
              help="Also time the fast path's whole frame pass (upload to download).")
@click.option("--select", type=click.Choice(["auto", "topk", "radix", "sample"]), default="auto", show_default=True,
              help="How the top-k filter finds its threshold: auto is sample on the CPU, radix on CUDA.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the rows (and the environment) to this JSON file.")
@click.option("--video", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Time this video's stages alone (decode, process, encode) and end to end instead.")
@click.option("--frames", type=click.IntRange(min=1), default=120, show_default=True,
              help="With --video: frames held in memory for the process and encode stages.")
@click.option("--plain", is_flag=True, help="With --video: use the plain FrameProcessor, not the fast path.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch; default as for video: all cores but two, at least one.")
def bench_command(device: str, sizes: list[int], batch: list[int], top_k: list[float], preset: list[str],
                  dtype: str | None, arch: str, weights: str | None, repeats: int | None, warmup: int | None,
                  graph: bool, zennit: bool, autolrp: bool, lxt: bool, frame_pass: bool, select: str, json_path: Path | None,
                  video: Path | None, frames: int, plain: bool, threads: int | None) -> None:
    """Time the LRP engine against the floor (forward + input gradient), zennit, autoLRP and LXT."""
    import torch
    from rich.console import Console

    from realtime_lrp.apps import bench
    from realtime_lrp.models.architectures import TRANSFORMER_ARCHS, build_model
    from realtime_lrp.models.errors import WeightsError
    from realtime_lrp.util.atomic import OutputError, check_writable, write_json

    console = stderr_console()
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 80)  # the table (80 wide), on stdout
    notice = lambda msg: console.print(msg, style="yellow")  # noqa: E731
    unknown = [p for p in preset if p not in PRESET_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown preset {unknown[0]!r}; choose from {', '.join(PRESET_NAMES)}",
                                 param_hint="--preset")
    if any(not 0 <= k <= 1 for k in top_k):
        raise click.BadParameter("top-k values must be in [0, 1]", param_hint="--top-k")
    if min(sizes) < 32 or min(batch) < 1:
        raise click.BadParameter("sizes must be at least 32 and batches at least 1")
    if json_path is not None:
        try:
            check_writable(json_path)
        except OutputError as exc:
            raise click.ClickException(str(exc)) from None
    fallback = device == "auto" and not torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(threads or default_threads())
    if device == "cpu" and dtype == "fp16":
        raise click.BadParameter("fp16 is CUDA-only here; use fp32 or bf16 on the CPU", param_hint="--dtype")
    if weights is not None:
        model, card = load_weights(weights)
    else:
        try:
            model, card = build_model(arch, 1000, 3).eval(), bench.imagenet_card(sizes[0])
            if arch in TRANSFORMER_ARCHS:  # the size check names the size a ViT or MaxViT was built for
                from torchvision.models import get_model_weights

                card["input_size"] = list(get_model_weights(arch).DEFAULT.meta["min_size"])
        except WeightsError as exc:
            raise click.ClickException(str(exc)) from None
    if fallback:
        notice("CUDA is not available: benchmarking on the CPU in fp32")
    env = bench.environment()
    try:
        if video is not None:
            result = _bench_video(video, model, card, preset[0], top_k[-1], sizes, batch[0], device,
                                  frames, plain, notice)
            out.print(bench.video_table(result))
            payload = {"environment": env, "rows": [], "video": result.as_dict()}
        else:
            config = bench.BenchConfig(sizes, batch, top_k, preset, device, dtype, graph, repeats, warmup,
                                       zennit, frame_pass, select, autolrp, lxt)
            rows = bench.bench_model(model, card, config, notice,
                                     on_row=lambda r: console.print(
                                         f"  {r['size']}px batch {r['batch']} top-k {r['top_k']:g} {r['preset']}:"
                                         f" engine {r['engine_ms']:.2f} ms, floor {r['floor_ms']:.2f} ms"))
            name = arch if weights is None else weights
            out.print(bench.rows_table(rows, f"rtlrp bench {name} on {env['gpu'] or 'CPU'}, "
                                             f"{env['threads']} threads ({env['date']})"))
            payload = {"environment": env, "rows": rows, "video": None}
    except torch.cuda.OutOfMemoryError:
        raise click.ClickException("CUDA out of memory: try smaller --sizes or --batch") from None
    except bench.InputSizeError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:
        from realtime_lrp.util.signals import exit_code

        console.print(f"Interrupted: nothing written{f' to {json_path}' if json_path else ''}.")
        sys.exit(exit_code(exc))
    if json_path is not None:
        try:
            write_json(json_path, payload)
        except OutputError as exc:
            raise click.ClickException(str(exc)) from None
        console.print(f"wrote {json_path}")


def _bench_video(path: Path, model, card: dict, preset: str, top_k: float, sizes: list[int], batch: int,
                 device: str, frames: int, plain: bool, notice):
    """``rtlrp bench --video``: build the processor and time the stages (errors as one line)."""
    from realtime_lrp.apps import bench
    from realtime_lrp.apps.video import InputError, PartialOutput
    from realtime_lrp.pipeline.fast import FastProcessor
    from realtime_lrp.pipeline.processor import FrameProcessor, ProcessingError

    size = None if card.get("arch") != "random" else (sizes[0], sizes[0])
    processor = FrameProcessor(model, card, preset=preset, top_k=top_k, size=size, device=device, notice=notice)
    if not plain:
        processor = FastProcessor(processor, notice=notice)
    try:
        return bench.bench_video(path, processor, batch=batch, keep=frames, notice=notice)
    except (InputError, ProcessingError, PartialOutput) as exc:
        raise click.ClickException(str(exc)) from None
