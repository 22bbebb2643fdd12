"""``rtlrp train`` and ``rtlrp export``: training recipes and weights for the runtime."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from realtime_lrp.cli.group import cli
from realtime_lrp.cli.options import check_device, command_line, size_pair

# realtime_lrp.models.architectures.ALL_ARCHS, spelled out so that --help does not import torch (a test checks
# they agree).
TRAIN_ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
               "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "alexnet",
               "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf", "regnet_y_800mf",
               "convnext_tiny", "densenet121")


@cli.command("train")
@click.option("--arch", default="vgg11_bn", show_default=True, type=click.Choice(TRAIN_ARCHS),
              help="torchvision architecture: a VGG, ResNet, ResNeXt, Wide-ResNet, AlexNet, MobileNetV3, "
                   "EfficientNet, RegNetY, ConvNeXt or DenseNet.")
@click.option("--dataset", default="fashion-mnist", show_default=True,
              help="fashion-mnist, cifar10 or imagefolder:PATH (PATH/train and PATH/val).")
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=2),
              help="Per process.")
@click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate of the one-cycle schedule (SGD, Nesterov momentum).")
@click.option("--weight-decay", default=5e-4, show_default=True, type=click.FloatRange(min=0))
@click.option("--label-smoothing", default=0.0, show_default=True,
              type=click.FloatRange(0, 1, max_open=True))
@click.option("--width", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Scale of the conv channel counts (VGGs and ResNets); default 0.25 for a VGG, "
                   "1 (torchvision's) for a ResNet.")
@click.option("--hidden", default=256, show_default=True, type=click.IntRange(min=1),
              help="VGG: width of the two hidden Linear layers (torchvision: 4096).")
@click.option("--pool", default=1, show_default=True, type=click.IntRange(min=1),
              help="VGG: output size of the adaptive average pool (torchvision: 7).")
@click.option("--dropout", default=0.5, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="VGG, AlexNet: dropout of the two hidden Linear layers (training only).")
@click.option("--small-input/--no-small-input", default=None,
              help="ResNet: CIFAR-style stem (3x3 stride-1 first conv, no max-pool); the other non-VGG CNNs "
                   "but AlexNet: a total stride 4 times smaller; default on for inputs of at most 64 pixels.")
@click.option("--input-size", default=None, metavar="N|WxH",
              help="Training resolution; default 32 (fashion-mnist, cifar10) or 224.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random crop with padding and horizontal flip.")
@click.option("--amp", is_flag=True, help="Mixed precision: fp16 + GradScaler on CUDA, bf16 on CPU.")
@click.option("--amp-dtype", type=click.Choice(["fp16", "bf16"]), default=None,
              help="Autocast dtype (implies --amp).")
@click.option("--out", default="runs/train", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Run directory.")
@click.option("--resume", type=click.Path(exists=True, path_type=Path), default=None,
              help="Checkpoint file or run directory to continue from.")
@click.option("--device", default="auto", show_default=True, callback=check_device,
              help="auto, cpu, cuda or cuda:N; auto falls back to the CPU (and says so), an explicit cuda"
                   " without CUDA is an error.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-steps", default=None, type=click.IntRange(min=1),
              help="Stop after this many optimizer steps in total (quick runs).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
              help="Data-loading processes for imagefolder data.")
@click.pass_context
def train_command(ctx: click.Context, **options: object) -> None:
    """Train a torchvision CNN (mixed precision with --amp; DDP under torchrun)."""
    from realtime_lrp.apps.train.loop import TrainConfig, TrainingError, TrainingInterrupted, main
    from realtime_lrp.models.datasets import DataError
    from realtime_lrp.models.errors import WeightsError

    size = options.pop("input_size")
    options["input_size"] = size_pair(size) if size else (
        [224, 224] if str(options["dataset"]).startswith("imagefolder:") else [32, 32])
    options["out"] = str(options["out"])
    options["resume"] = str(options["resume"]) if options["resume"] else None
    config = TrainConfig(**options, command=command_line(ctx))
    explicit = [p.name for p in ctx.command.params
                if ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE]
    try:
        main(config, explicit)
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(128 + exc.signum)
    except (TrainingError, DataError, WeightsError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("export")
@click.argument("source", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Weight file to write, e.g. weights/NAME.pt; the card goes to NAME.json beside it.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Measure test_accuracy on the exported fp16 weights (else the checkpoint's value).")
def export_command(source: Path, out: Path, measure: bool) -> None:
    """Export a training run as fp16 weights plus a JSON model card."""
    from realtime_lrp.apps.train.export import export
    from realtime_lrp.apps.train.loop import TrainingError
    from realtime_lrp.models.datasets import DataError
    from realtime_lrp.models.errors import WeightsError
    from realtime_lrp.util.atomic import OutputError

    try:
        card = export(source, out, measure=measure)
    except (TrainingError, DataError, WeightsError, OutputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    acc = card["test_accuracy"]
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {card['arch']}, "
               f"{card['num_classes']} classes) and {out.with_suffix('.json')}; test accuracy "
               + (f"{acc:.2%}" if acc is not None else "not measured"))
