"""ROAD in rtlrp evaluate: the batched imputation and the AOPC against pytorch-grad-cam's per-image ROAD."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from realtime_lrp.apps.evaluate.metrics import FlipProtocol, aopc, flip_curves
from realtime_lrp.apps.evaluate.road import impute

road_lib = pytest.importorskip("pytorch_grad_cam.metrics.road")


def blob_masks(n: int, h: int, w: int, fraction: float, seed: int) -> torch.Tensor:
    """Smooth random regions covering about ``fraction`` of each image (what MoRF removes), as (n, 1, h, w)."""
    g = torch.Generator().manual_seed(seed)
    field = F.avg_pool2d(torch.randn(n, 1, h, w, generator=g), 5, 1, 2)
    rank = field.flatten(1).argsort(1).argsort(1).view(n, 1, h, w)
    return rank >= round((1 - fraction) * h * w)


@pytest.mark.parametrize("shape, fraction", [((3, 3, 24, 20), 0.5), ((2, 1, 17, 31), 0.1), ((2, 2, 16, 16), 0.9)])
def test_imputation_equals_the_librarys_sparse_solve(shape, fraction) -> None:
    n, c, h, w = shape
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    removed = blob_masks(n, h, w, fraction, seed=2)
    removed[0, 0, 0, :] = True  # a removed image border
    removed[-1, 0, h // 2, w // 2] = True  # and a lone pixel
    removed[-1, 0, 0, 0] = False  # keep one pixel, so every region has data
    ours = impute(x, removed, noise=0.0)
    imputer = road_lib.NoisyLinearImputer(noise=0.0)
    for i in range(n):
        reference = imputer(x[i], (~removed[i, 0]).float())
        assert torch.allclose(ours[i], reference, atol=2e-4), float((ours[i] - reference).abs().max())
    assert torch.equal(ours[~removed.expand_as(x)], x[~removed.expand_as(x)])  # kept pixels untouched


def test_imputation_noise_and_regions_without_data() -> None:
    x = torch.randn(4, 2, 20, 20, generator=torch.Generator().manual_seed(0))
    removed = blob_masks(4, 20, 20, 0.4, seed=3)
    clean = impute(x, removed, noise=0.0)
    noisy = impute(x, removed, noise=0.05, generator=torch.Generator().manual_seed(4))
    added = (noisy - clean)[removed.expand_as(x)]
    assert added.std().item() == pytest.approx(0.05, rel=0.1)
    again = impute(x, removed, noise=0.05, generator=torch.Generator().manual_seed(4))
    assert torch.equal(noisy, again)
    everything = impute(x, torch.ones(4, 1, 20, 20, dtype=torch.bool), noise=0.0)
    assert torch.equal(everything, torch.zeros_like(x))  # nothing to interpolate from: the model's mean, no NaN


def library_road_aopc(model, x, maps, target, fractions, most_relevant_first: bool) -> np.ndarray:
    """pytorch-grad-cam's ROAD at each fraction, per image: AOPC = mean over fractions of p(x) − p(x_k)."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    remove = RemoveMostRelevantFirst if most_relevant_first else RemoveLeastRelevantFirst
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in target]
    drops = []
    for f in fractions:
        # Both remove the pixels at or above the percentile, of the map (MoRF) or of 1 - map (LeRF).
        metric = PerturbationConfidenceMetric(remove(100 * (1 - f), road_lib.NoisyLinearImputer()))
        drops.append(-metric(x, maps.numpy(), targets, model))  # the library returns p(x_k) - p(x)
    return np.mean(drops, axis=0)


def test_road_aopc_equals_pytorch_grad_cams_within_0_02() -> None:
    from test_evaluate import shipped_inputs

    from realtime_lrp.lrp.engine import LRP

    model, card, inputs = shipped_inputs(8)
    x = inputs.x
    target = model(x).argmax(1)
    torch.manual_seed(0)  # the library draws its imputation noise from the global generator
    for preset, top_k in (("epsilon-plus-flat", 0.0), ("zplus", 0.05)):
        maps = LRP(model, preset=preset, top_k=top_k, mean=card["mean"], std=card["std"])(x, target).relevance
        maps = maps + 1e-3 * maps.abs().max() * torch.randn(maps.shape, generator=torch.Generator().manual_seed(5))
        # No ties (the noise above): the library cuts at a percentile of the map, or of 1 - map in fp32.
        protocol = FlipProtocol(step=0.1, max_fraction=0.5)
        morf, lerf = flip_curves(model, x, maps, target, protocol, None, torch.Generator().manual_seed(0), 0.01)
        fractions = protocol.fractions()[1:]
        for ours, most_first in ((aopc(morf), True), (aopc(lerf), False)):
            reference = library_road_aopc(model, x, maps, target, fractions, most_first)
            assert abs(float(ours.mean()) - float(reference.mean())) < 0.02, (preset, most_first)
            assert np.abs(ours.numpy() - reference).max() < 0.1, (preset, most_first)  # image by image, noise apart
        assert float(aopc(morf).mean()) > float(aopc(lerf).mean())  # a faithful map, not two equal curves
