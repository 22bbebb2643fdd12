"""The class-activation-map family: Grad-CAM, Grad-CAM++ and LayerCAM, batched in torch.

What users pick instead of LRP (pytorch-grad-cam is the most used explanation library for
PyTorch CNNs). The maps follow that library's definitions, which ``tests/test_cam.py`` checks
(r >= 0.999 against its maps); they are computed here on the device for a whole batch, where
the library moves activations and gradients to numpy and resizes each image with OpenCV.

For the activations A (N, C, h, w) of one layer and the gradient G of the explained logit
with respect to them:

- Grad-CAM (Selvaraju et al. 2017): w_c = mean over h, w of G_c; map = ReLU(Σ_c w_c A_c).
- Grad-CAM++ (Chattopadhyay et al. 2018): a = G² / (2G² + ΣA·G³ + 1e-6) (0 where G = 0),
  w_c = Σ ReLU(G_c)·a_c; map = ReLU(Σ_c w_c A_c).
- LayerCAM (Jiang et al. 2021): map = ReLU(Σ_c ReLU(G_c)·A_c).

The map is upsampled to the input (bilinear, half-pixel centres, as OpenCV's resize) and
scaled to [0, 1] per image. The layer is by default the last conv stage: the last module
(called once per forward pass) whose output is an image with more than one pixel.

It sits beside the LRP engine, not in it, so that every command can show it: ``rtlrp evaluate``
measures it and ``rtlrp video|explain|webcam|serve --method`` shows it (:class:`CAM` has the
engine's call signature and result).
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from realtime_lrp.lrp.engine import LRPResult, Target, initial_relevance

CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "layercam")


class CAMLayerError(ValueError):
    """No layer the CAM methods can read, or a named one that is unfit; the message is one line."""


def spatial_layers(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the modules whose output on ``x`` is (N, C, h, w) with h·w > 1, in the order they finish.

    Modules called more than once per forward pass (a ResNet block's shared ReLU) are left out:
    their activations are ambiguous. The last one is the default CAM layer: of modules that
    return the same tensor (a container and its last child), it is the outermost.
    """
    calls: dict[str, int] = {}
    outputs: dict[str, Tensor] = {}

    def hook(name: str) -> Callable:
        def record(_module: nn.Module, _inp: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            outputs.pop(name, None)
            if isinstance(out, Tensor):
                outputs[name] = out  # re-inserted: dict order is the order of last finish
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return [name for name, out in outputs.items()
            if calls[name] == 1 and out.dim() == 4 and out.shape[2] * out.shape[3] > 1]


def cam_layer(model: nn.Module, x: Tensor, name: str | None = None) -> str:
    """The layer CAM reads: ``name`` if it has spatial output, else the last conv stage; one-line errors."""
    in_channels(model)  # a model without a conv stage: one line
    candidates = spatial_layers(model, x)
    if name is None:
        if not candidates:
            raise CAMLayerError("no layer of the model has an output of more than one pixel: no CAM layer")
        return candidates[-1]
    if name not in candidates:
        shown = ", ".join(candidates[-12:])
        why = "has no spatial output" if name in dict(model.named_modules()) else "names no layer"
        raise CAMLayerError(f"--cam-layer {name!r} {why}; layers with spatial output: {shown}")
    return name


def _activations_and_gradients(model: nn.Module, layer: str, x: Tensor,
                               target: Target) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One forward and one backward pass: the activations of ``layer``, the gradient of the explained
    logit with respect to them, the logits and the explained class (``target`` as the engine takes it).

    The backward pass stops at the layer: its output enters what follows as a new leaf, so the layers
    before it get no gradient (nor do the weights: the model's ``requires_grad`` does not matter).
    """
    module = dict(model.named_modules())[layer]
    seen: list[Tensor] = []

    def keep(_module: nn.Module, _inp: object, out: Tensor) -> Tensor:
        seen.append(out.detach().requires_grad_(True))
        return seen[-1].clone()  # what follows gets a copy: an in-place op after the layer cannot change its values

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x.detach())
            _, explained = initial_relevance(logits.detach(), target)
            grads, = torch.autograd.grad(logits.gather(1, explained.view(-1, 1)).sum(), seen[-1])
    finally:
        handle.remove()
    return seen[-1].detach(), grads, logits.detach(), explained


def _combine(acts: Tensor, grads: Tensor, method: str, size: tuple[int, int]) -> Tensor:
    """``method``'s maps (N, H, W) in [0, 1] at ``size`` from a layer's activations and gradients."""
    acts, grads = acts.float(), grads.float()
    if method == "gradcam":
        cam = (grads.mean((2, 3), keepdim=True) * acts).sum(1)
    elif method == "gradcam++":
        g2 = grads.square()
        a = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads + 1e-6)
        a = torch.where(grads != 0, a, torch.zeros_like(a))
        cam = ((grads.clamp(min=0) * a).sum((2, 3), keepdim=True) * acts).sum(1)
    elif method == "layercam":
        cam = (grads.clamp(min=0) * acts).sum(1)
    else:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    cam = F.interpolate(cam.clamp(min=0)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    low = cam.flatten(1).min(1).values.view(-1, 1, 1)
    cam = cam - low
    return cam / (cam.flatten(1).max(1).values.view(-1, 1, 1) + 1e-7)


def cam_maps(model: nn.Module, layer: str, x: Tensor, target: Tensor, method: str) -> Tensor:
    """``method``'s maps (N, H, W) in [0, 1] for ``target`` (N,), from the activations of ``layer``."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    acts, grads, _, _ = _activations_and_gradients(model, layer, x, target)
    return _combine(acts, grads, method, x.shape[-2:])


def in_channels(model: nn.Module) -> int:
    """The input channels of the model's first convolution; :class:`CAMLayerError` if it has none."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise CAMLayerError(f"{type(model).__name__} has no convolutional stage: the CAM methods need one "
                            "(a token grid is not reshaped into an image here)")
    return first.in_channels


class CAM:
    """A CAM method with the engine's interface: ``cam(x, target)`` gives an :class:`LRPResult`.

    ``model`` runs as it is, on its own device and dtype (``x`` must match); ``layer`` None reads
    the last conv stage of an input of ``size`` (H, W). The maps are positive ([0, 1]); ``top_k``
    is kept for the callers that set it, and has no effect. One forward and one backward pass a
    call (``torch.autograd.grad`` from the explained logit to the layer). ``finite`` flags each
    sample whose logits and map are finite; there are no steps to name (``step_name`` is None).
    """

    signed = False

    def __init__(self, model: nn.Module, method: str, size: tuple[int, int], layer: Union[str, None] = None):
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
        self.model, self.method = model, method
        self.in_channels = in_channels(model)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        probe = torch.zeros(1, self.in_channels, *size, device=self.device, dtype=self.dtype)
        self.layer = cam_layer(model, probe, layer)
        self.top_k = 0.0

    def step_name(self, step: int) -> None:
        """No steps: a CAM map is not propagated layer by layer."""
        return None

    def __call__(self, x: Tensor, target: Target = None) -> LRPResult:
        """The maps of ``target`` (None: the top-1 class; an int, list or per-sample tensor)."""
        if isinstance(target, str):
            raise ValueError(f"target {target!r} has no CAM map: give a class, or none for the top-1 class")
        acts, grads, logits, explained = _activations_and_gradients(self.model, self.layer, x, target)
        maps = _combine(acts, grads, self.method, x.shape[-2:])
        logits = logits.float()
        finite = torch.isfinite(logits).all(1) & torch.isfinite(maps).flatten(1).all(1)
        return LRPResult(maps, logits, explained, finite)
