"""What the top-k filter does to ViT maps: Gini and MoRF − LeRF on a small random torchvision ViT.

The filter runs before every filtered node (``Op.filtered``: the patch conv, every Linear, the
attention's q/k/v and output projections), on the relevance at that node's output: for a ViT the
(N, tokens, features) relevance of a block, the top-k fraction kept over tokens and features of each
sample together. Random weights and inputs, so the figures say what the filter does to a map's
shape, not how faithful a trained model's maps are. Prints a markdown table::

    PYTHONPATH=$PWD python tests/vit_filter_effect.py
"""
from __future__ import annotations

import torch

from realtime_lrp import LRP
from realtime_lrp.apps.evaluate.metrics import FlipProtocol, aopc, flip_curves, gini
from tests.test_transformers import random_vit


def main() -> None:
    torch.set_num_threads(1)
    model = random_vit(64, 8, 4, 4, 64, 128, seed=2, classes=10)
    x = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    protocol = FlipProtocol(step=0.05, max_fraction=0.5)
    print("| preset | top-k | Gini | MoRF AOPC | LeRF AOPC | MoRF − LeRF |")
    print("|---|---|---|---|---|---|")
    for preset in ("cp-lrp", "attnlrp"):
        for top_k in (0.0, 0.02, 0.1):
            result = LRP(model, preset=preset, top_k=top_k)(x)
            morf, lerf = flip_curves(model, x, result.relevance, result.target, protocol, torch.zeros_like(x),
                                     torch.Generator().manual_seed(4))
            m, le = float(aopc(morf).mean()), float(aopc(lerf).mean())
            print(f"| {preset} | {top_k:g} | {float(gini(result.relevance).mean()):.3f} | {m:.4f} | {le:.4f} "
                  f"| {m - le:.4f} |")


if __name__ == "__main__":
    main()
