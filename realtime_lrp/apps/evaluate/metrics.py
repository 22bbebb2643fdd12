"""The measures of a map: pixel-flipping and ROAD curves and AOPC, average sensitivity, the Gini index, Pearson r."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from realtime_lrp.apps.evaluate.methods import EvaluationError, Explain

FLIP_VALUES: tuple[str, ...] = ("mean", "black", "uniform")


FLIP_SCORES: tuple[str, ...] = ("probability", "logit")


FLIP_RANKS: tuple[str, ...] = ("relevance", "magnitude")


_CHUNK_ELEMENTS = 1 << 24  # perturbed-input values built at once (64 MiB in fp32)


@dataclass(frozen=True)
class FlipProtocol:
    """Pixel-flipping settings: step and largest fraction of pixels, replacement, score, ranking.

    ``value``: ``mean`` (the model's per-channel mean, 0 after normalisation), ``black``
    (pixel value 0) or ``uniform`` (uniform random pixels, drawn once per image).
    ``score``: the softmax ``probability`` of the explained class, or its ``logit``.
    ``rank``: by ``relevance`` (signed) or by its ``magnitude``.
    """

    step: float = 0.02
    max_fraction: float = 0.5
    value: str = "mean"
    score: str = "probability"
    rank: str = "relevance"

    def __post_init__(self) -> None:
        if not 0 < self.step <= self.max_fraction <= 1:
            raise EvaluationError(f"flip step {self.step:g} and maximum {self.max_fraction:g} must satisfy "
                                  "0 < step <= maximum <= 1")
        for name, value, allowed in (("value", self.value, FLIP_VALUES), ("score", self.score, FLIP_SCORES),
                                     ("rank", self.rank, FLIP_RANKS)):
            if value not in allowed:
                raise EvaluationError(f"unknown flip {name} {value!r}; choose one of {', '.join(allowed)}")

    @property
    def steps(self) -> int:
        """K, the number of perturbation steps."""
        return int(math.floor(self.max_fraction / self.step + 1e-9))

    def fractions(self) -> list[float]:
        """Fraction of pixels flipped at k = 0..K (for the curves' x axis)."""
        return [round(k * self.step, 10) for k in range(self.steps + 1)]

    def counts(self, pixels: int) -> list[int]:
        """Pixels flipped at k = 0..K for an image of ``pixels`` pixels: round(k·step·pixels)."""
        return [min(pixels, round(k * self.step * pixels)) for k in range(self.steps + 1)]


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson r of each pair of rows of ``a`` and ``b`` (N, ...); NaN where a row is constant."""
    x = a.reshape(a.shape[0], -1).double()
    y = b.reshape(b.shape[0], -1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    denom = (x.square().sum(1) * y.square().sum(1)).sqrt()
    r = (x * y).sum(1) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan"))).float()


def gini(maps: Tensor) -> Tensor:
    """Gini index of |R| per map (N, ...): Σ_k (2k − n − 1)·a_(k) / (n·Σa), a sorted ascending.

    NaN for an all-zero map.
    """
    a = maps.reshape(maps.shape[0], -1).abs().double().sort(1).values
    n = a.shape[1]
    k = torch.arange(1, n + 1, dtype=torch.float64, device=a.device)
    total = a.sum(1)
    g = ((2 * k - n - 1) * a).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.full_like(g, float("nan"))).float()


def flip_order(relevance: Tensor, most_relevant_first: bool, generator: torch.Generator) -> Tensor:
    """Pixel indices (N, H·W) from most to least relevant (or the reverse), ties in random order."""
    r = relevance.reshape(relevance.shape[0], -1)
    tiebreak = torch.rand(r.shape, generator=generator, device=generator.device).to(r.device).argsort(1)
    within = r.gather(1, tiebreak).argsort(dim=1, descending=most_relevant_first, stable=True)
    return tiebreak.gather(1, within)


def replacement(x: Tensor, value: str, mean: Sequence[float], std: Sequence[float],
                generator: torch.Generator) -> Tensor:
    """What flipped pixels become, in normalised units, shaped like ``x``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if value == "mean":
        return torch.zeros_like(x)
    if value == "black":
        return ((0.0 - m) / s).expand_as(x).clone()
    pixels = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    return (pixels - m) / s


def score_batch(model: nn.Module, x: Tensor, target: Tensor, score: str) -> Tensor:
    """The explained class's softmax probability (or logit) for each input, in fp32."""
    with torch.inference_mode():
        logits = model(x).float()
    if score == "probability":
        logits = torch.softmax(logits, dim=1)
    return logits.gather(1, target.view(-1, 1))[:, 0]


def flip_curves(model: nn.Module, x: Tensor, relevance: Tensor, target: Tensor, protocol: FlipProtocol,
                value: Tensor | None, generator: torch.Generator, road_noise: float | None = None
                ) -> tuple[Tensor, Tensor]:
    """MoRF and LeRF curves (N, K+1): the score after flipping 0, 1, ..., K steps of pixels.

    Flipped pixels become ``value``, or, given ``road_noise``, ROAD's noisy linear imputation
    of them from the rest of the image (:func:`realtime_lrp.apps.evaluate.road.impute`, noise
    drawn from ``generator``). All steps of a group of images go through the model in one
    forward pass.
    """
    from realtime_lrp.apps.evaluate.road import impute

    n, c, h, w = x.shape
    rank_by = relevance.abs() if protocol.rank == "magnitude" else relevance
    counts = torch.tensor(protocol.counts(h * w), device=x.device)
    steps = len(counts)
    flat_x = x.reshape(n, 1, c, h * w)
    flat_v = None if value is None else value.reshape(n, 1, c, h * w)
    chunk = _CHUNK_ELEMENTS if road_noise is None else _CHUNK_ELEMENTS // 32  # the solver holds ~8 fp64 copies
    group = max(1, chunk // (steps * c * h * w))
    curves = []
    for most_first in (True, False):
        order = flip_order(rank_by, most_first, generator)
        position = torch.empty_like(order).scatter_(
            1, order, torch.arange(h * w, device=x.device).expand(n, -1).contiguous())
        scores = []
        for i in range(0, n, group):
            flipped = position[i:i + group, None, None, :] < counts.view(1, -1, 1, 1)  # (g, K+1, 1, HW)
            if road_noise is None:
                inputs = torch.where(flipped, flat_v[i:i + group], flat_x[i:i + group]).reshape(-1, c, h, w)
            else:
                images = flat_x[i:i + group].expand(-1, steps, -1, -1).reshape(-1, c, h, w)
                inputs = impute(images, flipped.reshape(-1, 1, h, w), road_noise, generator)
            labels = target[i:i + group].repeat_interleave(steps)
            scores.append(score_batch(model, inputs, labels, protocol.score).view(-1, steps))
        curves.append(torch.cat(scores))
    return curves[0], curves[1]


def aopc(curve: Tensor) -> Tensor:
    """Area over the perturbation curve per image: mean over k = 1..K of score_0 − score_k."""
    return (curve[:, :1] - curve[:, 1:]).mean(1)


def sensitivity(explain: Explain, x: Tensor, target: Tensor, maps: Tensor, sigma: Tensor, draws: int,
                generator: torch.Generator) -> Tensor:
    """Mean Pearson r (N,) between ``maps`` (of ``x``) and the maps of ``x`` + N(0, sigma²) noise.

    ``sigma`` is per channel in normalised units, shaped to broadcast against ``x``.
    """
    rs = []
    for _ in range(draws):
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device) * sigma
        rs.append(pearson_rows(maps, explain(x + noise, target)))
    return torch.stack(rs).nanmean(0)


def other_classes(target: Tensor, classes: int, generator: torch.Generator) -> Tensor:
    """A class other than ``target`` (N,) per sample, uniform over the other ``classes − 1``."""
    shift = torch.randint(1, classes, target.shape, generator=generator, device=generator.device)
    return (target + shift.to(target.device)) % classes


def class_sensitivity(explain: Explain, x: Tensor, target: Tensor, maps: Tensor, classes: int,
                      generator: torch.Generator) -> Tensor:
    """|Pearson r| (N,) between ``maps`` (of the explained class) and the maps of a random other class.

    Quantus's Random Logit test (Sixt et al. 2020): a class-discriminative method gives the
    other class a different map (|r| well below 1); |r| = 1 means the map ignores the class.
    The magnitude, because plain LRP starts from the class's logit, so a class with a negative
    logit gets the same map negated (r = −1), which shows the same pixels.
    """
    return pearson_rows(maps, explain(x, other_classes(target, classes, generator))).abs()
