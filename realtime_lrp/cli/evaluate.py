"""``rtlrp evaluate``: how faithful, stable and sparse each method's maps are."""
from __future__ import annotations

from pathlib import Path

import click

from realtime_lrp.apps.evaluate.methods import METHOD_NAMES
from realtime_lrp.cli.group import cli
from realtime_lrp.cli.options import (
    WEIGHTS_HELP,
    check_device,
    check_size,
    comma_list,
    default_threads,
    load_weights,
    stderr_console,
)


@cli.command("evaluate")
@click.argument("source", metavar="[SOURCE]", required=False)
@click.option("--weights", default="shipped", show_default=True, metavar="auto|imagenet|shipped|PATH",
              help=WEIGHTS_HELP)
@click.option("-n", "--images", default=256, show_default=True, type=click.IntRange(min=1),
              help="Evaluate on the first N images (or video frames).")
@click.option("--methods", default=",".join(METHOD_NAMES), show_default=True, callback=comma_list(str),
              metavar="NAME,...", help="LRP presets, CAM methods (gradcam, gradcam++, layercam) and baselines "
              "(random, gradient, gradient-x-input), comma-separated.")
@click.option("--cam-layer", default=None, metavar="NAME",
              help="Module whose activations the CAM methods read; default: the last conv stage.")
@click.option("--top-k", default="0,0.02,0.05", show_default=True, callback=comma_list(float), metavar="K,K,...",
              help="Filter fractions for every preset; 0 is unfiltered.")
@click.option("--target-modes", default="plain", show_default=True, callback=comma_list(str),
              metavar="plain,contrastive,softmax-gradient",
              help="Target modes of every preset: plain LRP, CLRP (contrastive) or SGLRP (softmax-gradient).")
@click.option("--dtypes", default="auto", show_default=True, metavar="auto|fp32,bf16,fp16",
              help="Precisions of the LRP maps; auto: fp32, bf16, and fp16 on CUDA.")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1), help="Images per batch.")
@click.option("--size", default=None, metavar="N|WxH", callback=check_size,
              help="Processing size the images are resized to; default: the model's input size.")
@click.option("--noise", default=0.5, show_default=True, type=click.FloatRange(min=0),
              help="Standard deviation of the sensitivity noise, in grey levels of 255.")
@click.option("--draws", default=3, show_default=True, type=click.IntRange(min=1),
              help="Noise draws per image for the sensitivity.")
@click.option("--flip-step", default=0.02, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of the pixels flipped per pixel-flipping step.")
@click.option("--flip-max", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Fraction of the pixels flipped at the last step.")
@click.option("--flip-value", type=click.Choice(["mean", "black", "uniform"]), default="mean", show_default=True,
              help="What flipped pixels become: the model's mean (0 after normalisation), black, or uniform noise.")
@click.option("--flip-score", type=click.Choice(["probability", "logit"]), default="probability",
              show_default=True, help="Score recorded after each step, for the explained class.")
@click.option("--flip-rank", type=click.Choice(["relevance", "magnitude"]), default="relevance",
              show_default=True, help="Rank pixels by relevance (signed) or by its magnitude.")
@click.option("--road/--no-road", default=True, show_default=True,
              help="Also ROAD: MoRF and LeRF with removed pixels imputed from their neighbours (Rong et al. 2022).")
@click.option("--class-r/--no-class-r", "class_r", default=True, show_default=True,
              help="Also the class sensitivity: r between the maps of the top-1 class and a random other class.")
@click.option("--smooth", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Video input: average maps over frames as rtlrp video --smooth does.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise, tie order and random maps.")
@click.option("--device", default="auto", show_default=True, callback=check_device,
              help="auto, cpu, cuda or cuda:N; auto falls back to the CPU (and says so), an explicit cuda"
                   " without CUDA is an error.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch; default as for video: all cores but two, at least one.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write one row per method (and the settings) to this JSON file.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the MoRF and LeRF curves of every method into this PNG.")
def evaluate_command(source: str | None, weights: str, images: int, methods: list[str], cam_layer: str | None,
                     top_k: list[float], target_modes: list[str], dtypes: str, batch: int, size: str | None,
                     noise: float, draws: int, flip_step: float, flip_max: float, flip_value: str,
                     flip_score: str, flip_rank: str, road: bool, class_r: bool, smooth: float, seed: int,
                     device: str, threads: int | None, json_path: Path | None, plot_path: Path | None) -> None:
    """Measure how faithful, stable and sparse each method's maps are: SOURCE is a folder of
    images, a video file or fashion-mnist (the default for models trained on it)."""
    import sys

    import torch
    from rich.console import Console

    from realtime_lrp.apps.evaluate.methods import EvaluationError, plan_methods
    from realtime_lrp.apps.evaluate.metrics import FlipProtocol
    from realtime_lrp.apps.evaluate.report import evaluate_progress, results_table
    from realtime_lrp.apps.evaluate.runner import EvalConfig, run
    from realtime_lrp.pipeline.preprocess import parse_size

    console = stderr_console()
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)  # the table, on stdout
    torch.set_num_threads(threads or default_threads())
    try:
        config = EvalConfig(
            methods=methods, top_ks=top_k, target_modes=target_modes,
            dtypes=None if dtypes == "auto" else [d.strip() for d in dtypes.split(",") if d.strip()],
            flip=FlipProtocol(flip_step, flip_max, flip_value, flip_score, flip_rank),
            noise=noise, draws=draws, batch=batch, smooth=smooth, seed=seed,
            cam_layer=cam_layer, road=road, class_sensitivity=class_r)
        plan_methods(config.methods, config.top_ks, config.dtypes or ["fp32"], config.target_modes)
        model, card = load_weights(weights)
        with evaluate_progress(console) as progress:
            report = run(source, model, card, config, count=images, size=parse_size(size), device=device,
                         json_path=json_path, plot_path=plot_path, progress=progress,
                         notice=lambda msg: console.print(msg, style="yellow"))
    except EvaluationError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt as exc:
        from realtime_lrp.util.signals import exit_code

        console.print("Interrupted: nothing written.")
        sys.exit(exit_code(exc))
    settings = report.payload["settings"]
    title = f"rtlrp evaluate: {settings['model']} on {report.images} images of {settings['source']}"
    out.print(results_table(report.rows, title))
    if report.accuracy is not None:
        console.print(f"top-1 accuracy on these images: {report.accuracy:.2%}")
    if report.input_frame_r is not None:
        console.print(f"consecutive input frames correlate at r = {report.input_frame_r:.3f}")
    console.print(f"{len(report.rows)} methods on {report.images} images in {report.seconds:.1f} s")
    for path in (json_path, plot_path):
        if path is not None:
            console.print(f"wrote {path}")
