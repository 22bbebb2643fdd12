"""The explanation methods compared: LRP presets at each top-k and dtype, and the baselines."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from realtime_lrp.lrp.cam import CAM_METHODS
from realtime_lrp.lrp.engine import LRP
from realtime_lrp.lrp.presets import PRESET_NAMES

Notice = Callable[[str], None]


Explain = Callable[[Tensor, Tensor], Tensor]


BASELINES: tuple[str, ...] = ("random", "gradient", "gradient-x-input")




METHOD_NAMES: tuple[str, ...] = (*PRESET_NAMES, *CAM_METHODS, *BASELINES)


DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class EvaluationError(ValueError):
    """Inputs or settings the evaluation cannot use; the message is one line."""


@dataclass(frozen=True)
class Method:
    """One explanation method of a run: an LRP preset at a top-k and dtype, a CAM method or a baseline."""

    kind: str
    preset: str | None = None
    top_k: float | None = None
    dtype: str = "fp32"
    target_mode: str = "plain"

    @property
    def label(self) -> str:
        """The preset and its target mode unless plain (``zplus contrastive``), or the method's name."""
        if self.kind != "lrp":
            return self.kind
        return str(self.preset) + ("" if self.target_mode == "plain" else f" {self.target_mode}")

    @property
    def name(self) -> str:
        """``epsilon-plus-flat k=0.02 fp32``, ``zplus contrastive k=0 fp32``, or the baseline's name."""
        if self.kind != "lrp":
            return self.kind
        return f"{self.label} k={self.top_k:g} {self.dtype}"


def plan_methods(names: Sequence[str], top_ks: Sequence[float], dtypes: Sequence[str],
                 target_modes: Sequence[str] = ("plain",)) -> list[Method]:
    """The methods of a run, in table order: each preset × target mode × top-k × dtype, the CAM
    methods, the baselines.

    Unknown names, top-k values outside [0, 1], unknown dtypes and target modes are one-line errors.
    """
    from realtime_lrp.lrp.targets import TARGET_MODES

    odd = [m for m in target_modes if m not in TARGET_MODES]
    if odd or not target_modes:
        raise EvaluationError(f"unknown target mode {odd[0] if odd else ''!r}; choose from {', '.join(TARGET_MODES)}")
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        raise EvaluationError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHOD_NAMES)}")
    bad = [k for k in top_ks if not 0 <= k <= 1]
    if bad:
        raise EvaluationError(f"top-k {bad[0]:g} is outside [0, 1]")
    wrong = [d for d in dtypes if d not in DTYPES]
    if wrong:
        raise EvaluationError(f"unknown dtype {wrong[0]!r}; choose from {', '.join(DTYPES)}")
    ordered_dtypes = [d for d in DTYPES if d in dtypes]
    methods = [Method("lrp", p, float(k), d, m) for p in PRESET_NAMES if p in names
               for m in TARGET_MODES if m in target_modes for k in dict.fromkeys(top_ks) for d in ordered_dtypes]
    return methods + [Method(b) for b in (*CAM_METHODS, *BASELINES) if b in names]


def run_dtypes(requested: Sequence[str] | None, device: torch.device, notice: Notice) -> list[str]:
    """The dtypes to run: ``None`` means fp32 plus every lower precision the device runs.

    bf16 runs everywhere; fp16 only on CUDA here, so it is skipped on the CPU with a notice.
    """
    dtypes = list(requested) if requested else ["fp32", "bf16", "fp16"]
    if "fp16" in dtypes and device.type != "cuda":
        notice("fp16 skipped: it runs on CUDA only, and no CUDA device is in use")
        dtypes.remove("fp16")
    if not dtypes:
        raise EvaluationError("no dtype left to run")
    return dtypes


def lrp_explainer(model: nn.Module, card: Mapping[str, Any], method: Method) -> Explain:
    """LRP maps (N, H, W) in fp32 from a copy of ``model`` in the method's dtype."""
    dtype = DTYPES[method.dtype]
    runner = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    lrp = LRP(runner, preset=method.preset, top_k=method.top_k, mean=card["mean"], std=card["std"],
              target_mode=method.target_mode)

    def explain(x: Tensor, target: Tensor) -> Tensor:
        maps = lrp(x.to(dtype), target=target).relevance.float()
        return torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    return explain


def gradient_explainer(model: nn.Module, times_input: bool) -> Explain:
    """Saliency |∂y_c/∂x| summed over channels, or gradient × input (x normalised, signed).

    x is relative to the model's mean, so gradient × input is the first-order estimate of
    what replacing a pixel by the mean (the default flip) does to the logit.
    """
    def explain(x: Tensor, target: Tensor) -> Tensor:
        inp = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inp)
            grad, = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), inp)
        maps = grad * x if times_input else grad.abs()
        return maps.sum(1).detach().float()
    return explain


def random_explainer(generator: torch.Generator) -> Explain:
    """Uniform random maps: the floor every explanation must beat."""
    def explain(x: Tensor, target: Tensor) -> Tensor:
        n, _, h, w = x.shape
        return torch.rand((n, h, w), generator=generator, device=generator.device).to(x.device)
    return explain


def select_device(requested: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; ``cuda`` without CUDA is a one-line error."""
    requested = requested.lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError("CUDA is not available: use --device cpu or auto")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise EvaluationError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None


def cam_explainer(model: nn.Module, method: str, layer: str) -> Explain:
    """``method``'s maps (Grad-CAM, Grad-CAM++ or LayerCAM) from the activations of ``layer``."""
    from realtime_lrp.lrp.cam import cam_maps

    def explain(x: Tensor, target: Tensor) -> Tensor:
        return cam_maps(model, layer, x, target, method)
    return explain


def _explainer(model: nn.Module, card: Mapping[str, Any], method: Method, generator: torch.Generator,
               cam_layer: str | None = None) -> Explain:
    if method.kind == "lrp":
        return lrp_explainer(model, card, method)
    if method.kind in CAM_METHODS:
        return cam_explainer(model, method.kind, str(cam_layer))
    if method.kind == "random":
        return random_explainer(generator)
    return gradient_explainer(model, times_input=method.kind == "gradient-x-input")
