"""Named LRP presets, as data: for each kind of op a preset binds, the rule it gets.

A preset is a table ``kind -> rule`` (``conv``, ``linear``, ``maxpool``, ``avgpool``,
``adaptive_avgpool``, ``add``, ...; the kinds of :mod:`realtime_lrp.lrp.ops` whose rule a
preset chooses), plus the rules of the first layer (in ``named_modules()`` order, as zennit
counts: the first Conv/Linear, or the first Conv for ``first_conv_only`` presets). A kind
the table does not name is an error naming the kind, the preset and the node, raised when
the engine is built; no rule is ever chosen by default.

Rules are named by :class:`RuleSpec`, a class of :mod:`realtime_lrp.lrp.rules` and its
arguments, so this module imports no torch and the CLI can list presets cheaply. Adding a
preset is adding one entry to ``PRESETS``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class RuleSpec:
    """A rule by name: the class ``name`` of :mod:`realtime_lrp.lrp.rules` with ``args``."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def build(self) -> Any:
        """The rule object."""
        from realtime_lrp.lrp import rules

        return getattr(rules, self.name)(**dict(self.args))

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.args)})"


def rule(name: str, **args: Any) -> RuleSpec:
    """``rule("ZPlus", stabilizer=1e-5)``: the spec of a rule of :mod:`realtime_lrp.lrp.rules`."""
    return RuleSpec(name, tuple(args.items()))


@dataclass(frozen=True)
class Preset:
    """A rule set: ``rules`` maps each kind to its rule, ``first`` overrides it on the first layer.

    ``first_conv_only``: the first-layer rule goes to the first Conv (zennit's
    ``EpsilonGammaBox``), not to the first Conv or Linear (its ``EpsilonPlusFlat``).
    """

    name: str
    description: str
    reference: str
    signed: bool
    rules: Mapping[str, RuleSpec] = field(repr=False)
    first: Mapping[str, RuleSpec] = field(default_factory=dict, repr=False)
    first_conv_only: bool = False

    def spec_for(self, kind: str, first: bool) -> RuleSpec | None:
        """The rule of a node of ``kind`` (the first layer if ``first``), or None if the preset has none."""
        if first and kind in self.first:
            return self.first[kind]
        return self.rules.get(kind)


_POOLS_NORM = {"avgpool": rule("Norm"), "adaptive_avgpool": rule("Norm"), "add": rule("Norm")}
TRANSFORMER_KINDS = ("projection", "matmul", "softmax")
"""Kinds only the transformer presets bind: a model with them is explained by ``cp-lrp`` by default."""
_LRP0 = 1e-12
"""The stabiliser of LRP-0 (epsilon negligible, Gradient x Input), where LXT's efficient rules have none."""
_LAYERNORM = {"layernorm": rule("LayerNormCentred", epsilon=_LRP0)}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "epsilon-plus-flat",
            "Flat on the first conv, z+ on the other convs, epsilon on linears, winner-take-all max-pool, "
            "Norm on residual sums",
            "zennit EpsilonPlusFlat()",
            True,
            rules={"conv": rule("ZPlus"), "linear": rule("Epsilon"), "maxpool": rule("WinnerTakeAll"),
                   **_POOLS_NORM, **_LAYERNORM},
            first={"conv": rule("Flat"), "linear": rule("Flat")},
        ),
        Preset(
            "epsilon-gamma-box",
            "ZBox on the first conv, gamma(0.25) on the other convs, epsilon on linears, Norm on residual sums",
            "zennit EpsilonGammaBox(low, high)",
            True,
            rules={"conv": rule("Gamma", gamma=0.25), "linear": rule("Epsilon"), "maxpool": rule("WinnerTakeAll"),
                   **_POOLS_NORM, **_LAYERNORM},
            first={"conv": rule("ZBox")},
            first_conv_only=True,
        ),
        Preset(
            "zplus",
            "z+ with zeroed bias everywhere, max-pool as an average pool of its windows, first layer on an "
            "all-ones input, residual sums by z+ on their positive summands",
            "PyTorchRelevancePropagation",
            False,
            rules={"conv": rule("ZPlus", stabilizer=1e-5, zero_bias=True),
                   "linear": rule("ZPlus", stabilizer=1e-5, zero_bias=True),
                   "maxpool": rule("AvgPoolZ", stabilizer=1e-5),
                   "avgpool": rule("Norm", stabilizer=1e-5, signed_stabilizer=False),
                   "adaptive_avgpool": rule("Norm", stabilizer=1e-5, signed_stabilizer=False),
                   "add": rule("SumZPlus", stabilizer=1e-5)},
            first={"conv": rule("ZPlus", stabilizer=1e-5, zero_bias=True, ones_input=True),
                   "linear": rule("ZPlus", stabilizer=1e-5, zero_bias=True, ones_input=True)},
        ),
        Preset(
            "cp-lrp",
            "CP-LRP: attention probabilities held constant (relevance through the values only), LayerNorm with "
            "its standard deviation held constant, identity on activations, epsilon 1e-6 on every conv and "
            "Linear module; LRP-0 inside attention, on LayerNorm's centring and on sums",
            "LXT 2.1 vit_torch.cp_LRP patches with zennit Epsilon on conv/Linear, Gradient x Input (Ali et al. 2022)",
            True,
            rules={"conv": rule("Epsilon"), "linear": rule("Epsilon"), "maxpool": rule("WinnerTakeAll"),
                   **{k: rule("Norm", stabilizer=_LRP0) for k in ("avgpool", "adaptive_avgpool", "add")},
                   **_LAYERNORM, "projection": rule("Epsilon", epsilon=_LRP0),
                   "matmul": rule("AttentionValues", epsilon=_LRP0), "softmax": rule("HeldConstant")},
        ),
        Preset(
            "attnlrp",
            "AttnLRP: softmax by Prop. 3.1, products of two activations by the uniform epsilon rule (each operand "
            "half), LayerNorm with its standard deviation held constant, identity on activations, epsilon 1e-6 "
            "on every conv, Linear and attention projection",
            "LXT 2.1 explicit softmax_fn, matmul_fn, layer_norm_grad_fn (Achtibat et al. 2024)",
            True,
            rules={"conv": rule("Epsilon"), "linear": rule("Epsilon"), "maxpool": rule("WinnerTakeAll"),
                   **_POOLS_NORM, "layernorm": rule("LayerNormCentred"), "projection": rule("Epsilon"),
                   "matmul": rule("UniformProduct"), "softmax": rule("SoftmaxTaylor")},
        ),
    )
}
PRESET_NAMES: Sequence[str] = tuple(PRESETS)

AUTO = "auto"
AUTO_DESCRIPTION = "cp-lrp for a model with attention (a transformer), epsilon-plus-flat otherwise"
PRESET_CHOICES: Sequence[str] = (AUTO, *PRESET_NAMES)
"""What a user may ask for: a preset, or ``auto``."""


def auto_preset(kinds: Iterable[str]) -> tuple[str, str]:
    """The preset ``auto`` stands for on a graph with nodes of ``kinds``, and why (for the one line stating it)."""
    found = sorted(set(kinds) & set(TRANSFORMER_KINDS))
    if found:
        return "cp-lrp", f"the model has attention ({', '.join(found)} nodes)"
    return "epsilon-plus-flat", "the model has no attention"
