"""The LRP engine: one forward pass, then relevance sent back node by node.

``LRP`` is built once per model (the model read as a graph by :mod:`realtime_lrp.lrp.graph`,
rule weights precomputed in the model's dtype) and called on every frame. The backward
pass walks the graph in reverse with explicit tensor operations, no autograd graph, in
fp32, fp16 or bf16 on CPU or CUDA. A VGG is a chain; in a ResNet, relevance reaching one
tensor from several consumers is added up. A call has no host synchronisation, so it can
be captured in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from realtime_lrp.lrp.filter import FilterMode, RelevanceFilter
from realtime_lrp.lrp.graph import canonize
from realtime_lrp.lrp.nodes import Node, UnsupportedModelError
from realtime_lrp.lrp.ops import PRESET
from realtime_lrp.lrp.presets import AUTO, PRESET_CHOICES, PRESETS, Preset, RuleSpec, auto_preset
from realtime_lrp.lrp.rules import Propagator, RuleContext, pow2
from realtime_lrp.lrp.targets import target_mode as _target_mode

MAXPOOL_OPTIONS: dict[str, Union[RuleSpec, None]] = {
    "preset": None, "wta": RuleSpec("WinnerTakeAll"), "shared": RuleSpec("NearMaxShare", (("tolerance", 1e-2),)),
}
"""``LRP(maxpool=...)``: the preset's max-pool rule, or one of these in its place."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Target = Union[None, int, str, Sequence[int], Tensor]
Scaled = tuple[Tensor, Union[Tensor, None]]
"""Relevance as (R, log2_scale): the true relevance is ``R * 2**log2_scale`` per sample
(no scale: None)."""


@dataclass
class LRPResult:
    """Relevance maps (N, H, W) in fp32, the logits (N, classes) and the explained class (N,).

    ``finite`` (N,) bool: whether a sample's logits and map are all finite (False when fp16 overflowed).
    ``first_bad`` (N,) int64: the step at which the sample first went non-finite (forward, then backward
    order), -1 for none; None where steps are not checked (fp32, fp64: they do not overflow in practice).
    :meth:`LRP.step_name` names the step. Both stay on the device: reading them is the caller's sync.
    """

    relevance: Tensor
    logits: Tensor
    target: Tensor
    finite: Union[Tensor, None] = None
    first_bad: Union[Tensor, None] = None


@dataclass
class _Step:
    node: Node
    weight: Union[Tensor, None]
    bias: Union[Tensor, None]
    propagate: Union[Propagator, None]
    filtered: bool = False


def pixel_bounds(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Normalised bounds of pixels in [0, 1]: ``((0 - mean) / std, (1 - mean) / std)``."""
    m = torch.as_tensor(mean, dtype=torch.float32)
    s = torch.as_tensor(std, dtype=torch.float32)
    return (0 - m) / s, (1 - m) / s


def _merge(a: Scaled, b: Scaled) -> Scaled:
    """Add two relevances that carry different per-sample scales: both are brought to the
    larger scale first, by powers of two (exact), then added."""
    (ra, la), (rb, lb) = a, b
    if la is None and lb is None:
        return ra + rb, None
    la = torch.zeros_like(lb) if la is None else la
    lb = torch.zeros_like(la) if lb is None else lb
    common = torch.maximum(la, lb)
    shape = (-1,) + (1,) * (ra.dim() - 1)
    return ra * pow2(la - common).view(shape) + rb * pow2(lb - common).view(shape), common


class LRP:
    """Layer-wise Relevance Propagation with an optional top-k relevance filter.

    ``model`` is a CNN classifier built from Conv2d (batch norm after a conv is folded),
    ReLU, max/average pools, flatten, dropout, Linear and residual additions: torchvision's
    VGG, ResNet, ResNeXt, Wide-ResNet and AlexNet, this project's VGGs, or a plain
    ``nn.Sequential``. Which operations it reads, and how, is the op registry's
    (:mod:`realtime_lrp.lrp.ops`); a node the registry or the preset has no rule for raises
    :class:`realtime_lrp.lrp.UnsupportedModelError` naming it. The model is canonised from
    its own weights as they are (fp32 for a model in fp32) and never changed; the engine runs
    in ``dtype`` on ``device`` (default: the model's), so give an fp32 model and
    ``dtype=torch.float16`` rather than a model already cast to fp16. ``mean``/``std`` give
    the pixel bounds of the z^B rule (ImageNet's by default for 3-channel models, [0, 1]
    unnormalised otherwise). ``top_k`` in (0, 1) keeps that fraction of relevance before
    each node whose op is filtered (conv, linear, pools); 0 (the default here: plain LRP) or 1 turn it
    off; the commands use :data:`~realtime_lrp.lrp.filter.DEFAULT_TOP_K`. ``preset="auto"``
    takes ``cp-lrp`` for a model with attention and ``epsilon-plus-flat`` otherwise, and says so
    in ``chosen`` (None when the preset was named). ``target_mode``
    (:mod:`realtime_lrp.lrp.targets`): ``plain``, ``contrastive`` (CLRP) or ``softmax-gradient``
    (SGLRP). ``maxpool``: the preset's max-pool rule, ``wta`` (winner-take-all, zennit's) or
    ``shared`` (relevance shared among a window's values within 1 % of its maximum:
    :class:`realtime_lrp.lrp.rules.NearMaxShare`; README, "Max-pool near-ties").
    """

    def __init__(
        self,
        model: nn.Module,
        preset: str = AUTO,
        top_k: float = 0.0,
        filter_mode: FilterMode = "signed",
        mean: Union[Sequence[float], None] = None,
        std: Union[Sequence[float], None] = None,
        dtype: Union[torch.dtype, None] = None,
        device: Union[str, torch.device, None] = None,
        target_mode: str = "plain",
        maxpool: str = "preset",
    ):
        self.target_mode = _target_mode(target_mode)
        if maxpool not in MAXPOOL_OPTIONS:
            raise ValueError(f"unknown max-pool option {maxpool!r}; choose one of {', '.join(MAXPOOL_OPTIONS)}")
        if preset not in PRESETS and preset != AUTO:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_CHOICES)}")
        self.filter = RelevanceFilter(top_k, filter_mode)
        graph = canonize(model)  # before reading a parameter: a model without any is refused in one line
        self.chosen: Union[str, None] = None
        if preset == AUTO:
            preset, why = auto_preset(node.kind for node in graph.nodes)
            self.chosen = f"preset auto: {preset} ({why})"
        self.preset = PRESETS[preset]
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.dtype = dtype if dtype is not None else param.dtype
        self.output = graph.output
        first = next(node for node in graph.nodes if node.op.params)
        if first.kind != "conv":  # the input's channels, and z^B's pixel bounds, come from a first conv
            raise UnsupportedModelError(f"{type(model).__name__} starts with a Linear layer, not a Conv2d: "
                                        "the engine explains image CNNs")
        self.in_channels = first.weight.shape[1] * first.conv_args.get("groups", 1)
        if mean is None:
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.in_channels == 3 else ((0.0,), (1.0,))
        low, high = pixel_bounds(mean, std)
        context = RuleContext((low.to(self.device), high.to(self.device)))
        self.steps = []
        for i, node in enumerate(graph.nodes):
            if node.weight is not None:  # fp32 on the engine's device: rules derive their weights from these
                node.weight = node.weight.to(self.device)
                node.bias = None if node.bias is None else node.bias.to(self.device)
            spec = MAXPOOL_OPTIONS[maxpool] if node.kind == "maxpool" and maxpool != "preset" else None
            propagate = (spec or _spec(self.preset, node)).build().bind(node, self.dtype, context) if i else None
            bias = None if node.bias is None else node.bias.to(self.dtype)
            self.steps.append(_Step(node, node.weight_in(self.dtype), bias, propagate, node.op.filtered))

    @property
    def signed(self) -> bool:
        """Whether the preset's maps are signed (diverging colour map) or positive-only."""
        return self.preset.signed

    @property
    def top_k(self) -> float:
        return self.filter.top_k

    @top_k.setter
    def top_k(self, value: float) -> None:
        self.filter = RelevanceFilter(value, self.filter.mode, self.filter.method)

    def __call__(self, x: Tensor, target: Target = None) -> LRPResult:
        """Explain ``x`` (N, C, H, W): the top-1 class, given classes, or ``"softmax"``."""
        self._check_input(x)
        if isinstance(target, str) and self.target_mode.name != "plain":
            raise ValueError(f"target {target!r} needs the plain target mode, not {self.target_mode.name!r}")
        with torch.no_grad():
            try:
                return self._explain(x, target)
            except RuntimeError as error:
                if "too small" not in str(error):
                    raise
                h, w = x.shape[2:]
                least = self._smallest_side()
                need = f"at least {least}x{least}" if least else "a larger input"
                raise ValueError(f"size {w}x{h} is too small for this model: it needs {need}") from None

    def _accepts(self, side: int) -> bool:
        """Whether the forward pass runs on a (1, C, side, side) input: shapes only, under FakeTensorMode."""
        import logging

        from torch._subclasses.fake_tensor import FakeTensorMode

        log = logging.getLogger("torch._subclasses.fake_tensor")
        level = log.level
        log.setLevel(logging.CRITICAL)  # a failing shape check is the answer here, not an error to log
        try:
            with FakeTensorMode(allow_non_fake_inputs=True):
                values = [torch.empty(1, self.in_channels, side, side, dtype=self.dtype, device=self.device)]
                for step in self.steps[1:]:
                    inputs = step.node.inputs
                    a = values[inputs[0]] if len(inputs) == 1 else tuple(values[i] for i in inputs)
                    values.append(step.node.forward(a, step.weight, step.bias)[0])
        except (RuntimeError, ValueError, IndexError):
            return False
        finally:
            log.setLevel(level)
        return True

    def _smallest_side(self, limit: int = 1024) -> int | None:
        """The smallest square side the model takes (binary search), for the one-line error on a too-small input."""
        if not self._accepts(limit):
            return None
        low, high = 1, limit
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if self._accepts(mid) else (mid + 1, high)
        return low

    def step_name(self, step: int) -> Union[str, None]:
        """The layer name of a step index from :attr:`LRPResult.first_bad` (None for -1 or out of range)."""
        return self.steps[step].node.name if 0 < step < len(self.steps) else None

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.dtype != self.dtype or x.device != self.device:
            raise ValueError(f"input is {x.dtype} on {x.device}, the model is {self.dtype} on {self.device}")

    def _explain(self, x: Tensor, target: Target) -> LRPResult:
        copies = self.target_mode.copies
        values: list[Tensor] = [x if copies == 1 else torch.cat([x] * copies)]
        aux: list[Union[Tensor, None]] = [None]
        # fp16/bf16 can overflow: track per sample (on the device) the first step that went non-finite
        first = torch.full((values[0].shape[0],), -1, dtype=torch.long, device=x.device) if self._tracked else None
        for i, step in enumerate(self.steps[1:], 1):
            inputs = step.node.inputs
            a = values[inputs[0]] if len(inputs) == 1 else tuple(values[i] for i in inputs)
            out, extra = step.node.forward(a, step.weight, step.bias)
            values.append(out)
            aux.append(extra)
            if first is not None:
                first = _first_bad(first, out, i)
        logits = values[self.output].float()[:x.shape[0]]
        relevance, explained = initial_relevance(logits, target)
        relevance = self.target_mode.start(logits, relevance, explained)
        pending: list[Union[Scaled, None]] = [None] * len(self.steps)
        pending[self.output] = (relevance, None)
        for i in range(len(self.steps) - 1, 0, -1):
            entry, out, extra = pending[i], values[i], aux[i]
            pending[i] = values[i] = aux[i] = None  # only later nodes read node i: free it for reuse
            if entry is None:
                continue
            relevance, log_scale = entry
            step = self.steps[i]
            inputs = step.node.inputs
            a = values[inputs[0]] if len(inputs) == 1 else tuple(values[j] for j in inputs)
            if self.filter.active and step.filtered:
                relevance = self.filter(relevance)
            relevance, log_factor = step.propagate(a, out, extra, relevance)
            if log_factor is not None:
                log_scale = log_factor if log_scale is None else log_scale + log_factor
            parts = (None,) * len(inputs) if relevance is None else relevance if len(inputs) > 1 else (relevance,)
            for j, part in zip(inputs, parts):
                if part is None:  # no relevance for this input (a gate, a held constant): its branch is skipped
                    continue
                if first is not None:
                    first = _first_bad(first, part, i)
                pending[j] = (part, log_scale) if pending[j] is None else _merge(pending[j], (part, log_scale))
        relevance, log_scale = pending[0]
        maps = relevance.sum(1)
        if log_scale is not None:
            maps = (maps.double() * torch.exp2(log_scale.double()).view(-1, 1, 1)).float()
        maps = self.target_mode.finish(maps)
        finite = torch.isfinite(maps).flatten(1).all(1) & torch.isfinite(logits).all(1)
        if first is not None:  # a sample's copies (contrastive) share its verdict: the earliest bad step of any
            first = first.view(copies, -1)
            first = torch.where(first >= 0, first, len(self.steps)).amin(0)
            first = torch.where(first < len(self.steps), first, -1)
        return LRPResult(maps, logits, explained, finite, first)

    @property
    def _tracked(self) -> bool:
        """Whether steps are checked for overflow: only in the half-precision dtypes, where it happens."""
        return self.dtype in (torch.float16, torch.bfloat16)


def _first_bad(first: Tensor, value: Tensor, step: int) -> Tensor:
    """``first`` with ``step`` set for the samples of ``value`` that are non-finite and had no bad step yet."""
    bad = ~torch.isfinite(value).flatten(1).all(1)
    return torch.where(bad & (first < 0), step, first)


def _spec(preset: Preset, node: Node) -> RuleSpec:
    """The rule of ``node``: the one its op fixes, or the preset's (an error naming all three if it has none)."""
    if node.op.relevance != PRESET:
        return node.op.relevance
    first = node.first_conv if preset.first_conv_only else node.first
    spec = preset.spec_for(node.kind, first)
    if spec is None:
        raise UnsupportedModelError(f"preset {preset.name!r} has no rule for {node.kind} nodes such as "
                                    f"'{node.name}'")
    return spec


def initial_relevance(logits: Tensor, target: Target) -> tuple[Tensor, Tensor]:
    """Relevance at the output and the explained class per sample.

    ``None``: the top-1 class, one-hot times its logit; an int or one class per sample:
    those classes; ``"softmax"``: the softmax over all classes.
    """
    n, classes = logits.shape
    if isinstance(target, str):
        if target != "softmax":
            raise ValueError(f"target must be None, a class index or 'softmax', got {target!r}")
        return torch.softmax(logits, dim=1), logits.argmax(1)
    if target is None:
        chosen = logits.argmax(1)
    else:
        chosen = torch.as_tensor(target).to(logits.device, torch.long).flatten()
        if chosen.numel() == 1:
            chosen = chosen.expand(n)
        if chosen.numel() != n:
            raise ValueError(f"got {chosen.numel()} targets for a batch of {n}")
        if not isinstance(target, Tensor) or target.device.type == "cpu":
            if int(chosen.min()) < 0 or int(chosen.max()) >= classes:
                raise ValueError(f"target class out of range: the model has {classes} classes")
    index = chosen.view(-1, 1)
    return torch.zeros_like(logits).scatter_(1, index, logits.gather(1, index)), chosen
