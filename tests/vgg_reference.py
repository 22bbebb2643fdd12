"""Maps of the VGG-only engine (commit 88b582a), kept to show the graph engine gives VGGs the same maps.

``python tests/vgg_reference.py`` (with the old engine on ``PYTHONPATH``) wrote
``tests/data/vgg_reference.pt``; :func:`cases` builds the same models and inputs for the test.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torchvision
from torch import nn

REFERENCE = Path(__file__).parent / "data" / "vgg_reference.pt"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def vgg(bn: bool, seed: int) -> nn.Module:
    """A small torchvision VGG with random weights, biases and BN statistics."""
    torch.manual_seed(seed)
    cfg = [8, "M", 16, "M", 16, 16, "M"]
    model = torchvision.models.VGG(torchvision.models.vgg.make_layers(cfg, batch_norm=bn), num_classes=6)
    model.classifier[0] = nn.Linear(16 * 49, 32)
    model.classifier[3] = nn.Linear(32, 32)
    model.classifier[6] = nn.Linear(32, 6)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.normal_(0, 0.05)
    return model.eval()


def cases() -> list[dict]:
    """One dict per map: model options, preset, filter, dtype and target."""
    out = []
    filters = [(0.0, "signed", "auto"), (0.05, "signed", "topk"), (0.05, "magnitude", "radix")]
    for bn, preset, (top_k, mode, method), dtype in itertools.product(
            (False, True), ("epsilon-plus-flat", "epsilon-gamma-box", "zplus"), filters, ("fp32", "fp16")):
        if dtype == "fp16" and not bn:
            continue
        if preset == "zplus" and top_k == 0:
            target = "softmax"
        else:  # a signed filter on a class with a negative logit keeps nothing: explain the top-1 there
            target = None if bn or mode == "signed" and top_k > 0 else [1, 4]
        out.append({"bn": bn, "preset": preset, "top_k": top_k, "mode": mode, "method": method,
                    "dtype": dtype, "target": target})
    return out


def run(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(relevance, explained class) of the engine on PYTHONPATH for one case."""
    from realtime_lrp.lrp.engine import LRP

    dtype = DTYPES[case["dtype"]]
    model = vgg(case["bn"], seed=21).to(dtype)
    x = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(5)).to(dtype)
    lrp = LRP(model, preset=case["preset"], top_k=case["top_k"], filter_mode=case["mode"])
    lrp.filter.method = case["method"]
    result = lrp(x, target=case["target"])
    return result.relevance, result.target


if __name__ == "__main__":
    REFERENCE.parent.mkdir(exist_ok=True)
    torch.save([(case, *run(case)) for case in cases()], REFERENCE)
    print(f"wrote {REFERENCE}")
