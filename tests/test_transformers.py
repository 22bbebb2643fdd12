"""Transformers: LayerNorm, attention and the presets cp-lrp and attnlrp against LXT 2.1.

Per op, each rule of ``attnlrp`` equals LXT's explicit functional rule (``softmax_fn``,
``matmul_fn``, ``layer_norm_grad_fn``) on random inputs. The bound everywhere is
max|ours - reference| / max|reference| <= 1e-4 per sample. LXT stabilises by ``z + eps``,
this engine by ``z + eps sign(z)`` (zennit's convention): where a denominator is within eps
of zero the two differ, so the per-op products are compared at eps = 1e-9.
"""
from __future__ import annotations

import pytest
import torch

from realtime_lrp.lrp import ops, rules
from realtime_lrp.lrp.nodes import Node
from realtime_lrp.lrp.rules import RuleContext
from tests.lxt_reference import explicit_functional

CONTEXT = RuleContext((torch.zeros(3), torch.ones(3)))


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref| over each sample, the worst sample."""
    n = ref.shape[0]
    diff = (ours.double() - ref.double()).reshape(n, -1).abs().amax(1)
    return float((diff / ref.double().reshape(n, -1).abs().amax(1)).max())


def node(op: ops.Op, inputs: tuple[int, ...] = (0,), **attrs: object) -> Node:
    return Node("n", op, inputs, attrs=dict(attrs))


def test_softmax_rule_equals_lxt_softmax_fn_with_masked_inputs() -> None:
    lf = explicit_functional()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7) * 3
    x[:, :, :, -2:] = float("-inf")  # a mask, as attention scores carry
    R = torch.randn(2, 3, 5, 7)
    xr = x.clone().requires_grad_()
    lf.softmax(xr, -1).backward(R)
    propagate = rules.SoftmaxTaylor().bind(node(ops.SOFTMAX, dim=-1), torch.float32, CONTEXT)
    ours, scale = propagate(x, torch.softmax(x, -1), None, R)
    assert scale is None
    assert rel_error(ours, xr.grad) <= 1e-4
    assert torch.isfinite(ours).all()


def test_uniform_product_rule_equals_lxt_matmul_fn() -> None:
    lf = explicit_functional()
    torch.manual_seed(1)
    a, b, R = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 4, 6), torch.randn(2, 3, 5, 6)
    ar, br = a.clone().requires_grad_(), b.clone().requires_grad_()
    lf.matmul(ar, br, epsilon=1e-9).backward(R)
    propagate = rules.UniformProduct(epsilon=1e-9).bind(node(ops.MATMUL, (0, 1)), torch.float32, CONTEXT)
    (ra, rb), _ = propagate((a, b), a @ b, None, R)
    assert rel_error(ra, ar.grad) <= 1e-4 and rel_error(rb, br.grad) <= 1e-4
    # each operand gets half: without the bias-free stabiliser, the two add up to R
    assert torch.allclose(ra.sum() + rb.sum(), R.sum(), rtol=1e-3)


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_rule_equals_lxt_layer_norm_grad_fn(affine: bool) -> None:
    lf = explicit_functional()
    torch.manual_seed(2)
    x, R = torch.randn(2, 7, 16) * 2 + 0.5, torch.randn(2, 7, 16)
    w = torch.randn(16) if affine else None
    b = torch.randn(16) * 0.1 if affine else None
    xr = x.clone().requires_grad_()
    lf.layer_norm_grad_fn.apply(xr, w, b, 1e-5, 1e-9).backward(R)
    n = node(ops.LAYERNORM, dim=-1, eps=1e-5)
    n.weight, n.bias = w, b
    out = torch.nn.functional.layer_norm(x, (16,), w, b, 1e-5)
    ours, _ = rules.LayerNormCentred(epsilon=1e-9).bind(n, torch.float32, CONTEXT)(x, out, None, R)
    assert rel_error(ours, xr.grad) <= 1e-4


def test_layernorm_over_channels_equals_lxt_on_the_permuted_tensor() -> None:
    """ConvNeXt's LayerNorm2d normalises (N, C, H, W) over C: the rule over dim 1 is LXT's over the last dim."""
    lf = explicit_functional()
    torch.manual_seed(3)
    x, R, w, b = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 3, 5), torch.randn(8), torch.randn(8)
    xr = x.permute(0, 2, 3, 1).clone().requires_grad_()
    lf.layer_norm_grad_fn.apply(xr, w, b, 1e-6, 1e-9).backward(R.permute(0, 2, 3, 1))
    n = node(ops.LAYERNORM, dim=1, eps=1e-6)
    n.weight, n.bias = w, b
    out, _ = ops.LAYERNORM.forward(n, x, w, b)
    ours, _ = rules.LayerNormCentred(epsilon=1e-9).bind(n, torch.float32, CONTEXT)(x, out, None, R)
    assert rel_error(ours, xr.grad.permute(0, 3, 1, 2)) <= 1e-4


def test_attention_values_rule_is_the_epsilon_rule_with_the_probabilities_held_constant() -> None:
    torch.manual_seed(4)
    p = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    v, R = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    out = p @ v
    vr = v.clone().requires_grad_()
    (p @ vr).backward(R / out)  # the epsilon rule of a linear map is Gradient x Input of R / z
    (rp, rv), _ = rules.AttentionValues().bind(node(ops.MATMUL, (0, 1)), torch.float32, CONTEXT)((p, v), out, None, R)
    assert rp is None
    assert rel_error(rv, vr.grad * v) <= 1e-4
    assert torch.allclose(rv.sum((1, 2, 3)), R.sum((1, 2, 3)), rtol=1e-4)  # conservative: no bias


def test_held_constant_softmax_passes_no_relevance() -> None:
    propagate = rules.HeldConstant().bind(node(ops.SOFTMAX, dim=-1), torch.float32, CONTEXT)
    x = torch.randn(1, 4)
    assert propagate(x, torch.softmax(x, -1), None, torch.ones(1, 4)) == (None, None)


# -- whole ViTs ----------------------------------------------------------------------------------

def random_vit(image_size: int, patch: int, layers: int, heads: int, dim: int, mlp: int, seed: int = 0,
               classes: int = 7) -> torch.nn.Module:
    """A torchvision VisionTransformer with random weights everywhere (torchvision zeroes its head
    and class token, and starts LayerNorms at 1 and 0)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(image_size, patch, layers, heads, dim, mlp, num_classes=classes)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif name in ("class_token", "encoder.pos_embedding") or name.endswith("bias"):
                p.normal_(0.0, 0.3)
            elif p.dim() >= 2:
                p.normal_(0.0, (1 / p[0].numel()) ** 0.5)
    return model.eval()


VIT_SIZES = {
    "tiny": (32, 8, 2, 2, 16, 32),
    "wide": (48, 16, 3, 4, 32, 64),
    "one-head": (28, 7, 1, 1, 12, 24),
}


def lxt_cp_lrp_map(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LXT 2.1's CP-LRP for torchvision ViT: Gradient x Input under its own patches (vit_torch.cp_LRP),
    with zennit's Epsilon(1e-6) on the conv and Linear modules in LXT's Gradient x Input convention,
    as LXT's ViT example puts zennit rules on them (there: gamma)."""
    zcomposites = pytest.importorskip("zennit.composites")
    zrules = pytest.importorskip("zennit.rules")
    ztypes = pytest.importorskip("zennit.types")
    from tests.lxt_reference import patched, vit_patches, zennit_in_gradient_x_input

    x = x.clone().requires_grad_()
    composite = zcomposites.LayerMapComposite([(ztypes.Linear, zrules.Epsilon(epsilon=1e-6))])
    with patched(vit_patches()), zennit_in_gradient_x_input(), composite.context(model) as modified:
        out = modified(x)
        (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return (x * grad).detach().sum(1)


@pytest.mark.parametrize("size", list(VIT_SIZES))
def test_cp_lrp_equals_lxt_on_torchvision_vits(size: str) -> None:
    from realtime_lrp import LRP

    model = random_vit(*VIT_SIZES[size])
    torch.manual_seed(5)
    image = VIT_SIZES[size][0]
    x, target = torch.randn(2, 3, image, image), torch.tensor([2, 6])
    ref = lxt_cp_lrp_map(model, x, target)
    ours = LRP(model, preset="cp-lrp")(x, target=target)
    assert torch.equal(ours.target, target)
    assert ref.abs().amax() > 0
    assert rel_error(ours.relevance, ref) <= 1e-4


# -- attnlrp on a whole ViT: a slow reference of the same rules, by autograd -----------------------
# Each rule is an autograd Function whose backward takes relevance and returns relevance (the
# zennit convention); index ops between them (reshape, permute, cat, select) route it by their
# own backward, and branches add up. Nothing here shares code with the engine.

def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + torch.where(z >= 0, eps, -eps)


class _Epsilon(torch.autograd.Function):
    """``z = fn(*inputs)``, linear in its inputs plus a bias: R_i = x_i * d/dx_i (z . R / stab(z))."""

    @staticmethod
    def forward(ctx, fn, eps, *inputs):
        with torch.enable_grad():
            ctx.inputs = [t.detach().requires_grad_() for t in inputs]
            ctx.z = fn(*ctx.inputs)
        ctx.eps = eps
        return ctx.z.detach()

    @staticmethod
    def backward(ctx, R):
        grads = torch.autograd.grad(ctx.z, ctx.inputs, R / _stab(ctx.z.detach(), ctx.eps))
        return (None, None, *(t.detach() * g for t, g in zip(ctx.inputs, grads)))


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        return fn(x)

    @staticmethod
    def backward(ctx, R):
        return None, R


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.x, ctx.s = x, torch.softmax(x, -1)
        return ctx.s

    @staticmethod
    def backward(ctx, R):
        return ctx.x * (R - ctx.s * R.sum(-1, keepdim=True))


class _Uniform(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b, ctx.z = a, b, a @ b
        return ctx.z

    @staticmethod
    def backward(ctx, R):
        s = R / _stab(2 * ctx.z, 1e-6)
        return ctx.a * (s @ ctx.b.transpose(-1, -2)), ctx.b * (ctx.a.transpose(-1, -2) @ s)


def _eps(fn, *inputs, eps: float = 1e-6):
    return _Epsilon.apply(fn, eps, *inputs)


def _layer_norm(ln: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    def centred(t: torch.Tensor) -> torch.Tensor:
        std = (t.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt().detach()
        return (t - t.mean(-1, keepdim=True)) / std * ln.weight + ln.bias
    return _eps(centred, x)


def _attention(attn: torch.nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    n, t, e = x.shape
    h = attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q, k, v = (_eps(lambda y, i=i: torch.nn.functional.linear(y, w[i * e:(i + 1) * e], b[i * e:(i + 1) * e]), x)
               for i in range(3))
    q = _Identity.apply(lambda y: y * (e // h) ** -0.5, q)  # a product with a constant
    q, k, v = (y.reshape(n, t, h, e // h).transpose(1, 2) for y in (q, k, v))
    p = _Softmax.apply(_Uniform.apply(q, k.transpose(-1, -2)))
    o = _Uniform.apply(p, v).transpose(1, 2).reshape(n, t, e)
    return _eps(attn.out_proj, o)


def attnlrp_reference(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AttnLRP on a torchvision ViT, rule by rule (epsilon 1e-6 on conv, linears and projections,
    sums and LayerNorm's centring; the position embedding absorbs its share with no epsilon)."""
    x = x.clone().requires_grad_()
    n = x.shape[0]
    h = _eps(model.conv_proj, x).reshape(n, model.hidden_dim, -1).permute(0, 2, 1)
    h = torch.cat([model.class_token.detach().expand(n, -1, -1), h], 1)
    pos = model.encoder.pos_embedding.detach()
    h = _eps(lambda y: y + pos, h, eps=1e-12)
    for block in model.encoder.layers:
        h = _eps(torch.add, _attention(block.self_attention, _layer_norm(block.ln_1, h)), h)
        y = _eps(block.mlp[0], _layer_norm(block.ln_2, h))
        y = _eps(block.mlp[3], _Identity.apply(block.mlp[1], y))
        h = _eps(torch.add, h, y)
    logits = _eps(model.heads.head, _layer_norm(model.encoder.ln, h)[:, 0])
    R = torch.zeros_like(logits).scatter_(1, target.view(-1, 1), logits.gather(1, target.view(-1, 1)))
    (relevance,) = torch.autograd.grad(logits, x, R)
    return relevance.sum(1)


@pytest.mark.parametrize("size", ["tiny", "wide"])
def test_attnlrp_equals_a_slow_reference_of_its_rules_on_torchvision_vits(size: str) -> None:
    from realtime_lrp import LRP

    model = random_vit(*VIT_SIZES[size], seed=1)
    torch.manual_seed(6)
    image = VIT_SIZES[size][0]
    x, target = torch.randn(2, 3, image, image), torch.tensor([0, 4])
    ref = attnlrp_reference(model, x, target)
    ours = LRP(model, preset="attnlrp")(x, target=target).relevance
    assert ref.abs().amax() > 0
    assert rel_error(ours, ref) <= 1e-4
    assert rel_error(LRP(model, preset="cp-lrp")(x, target=target).relevance, ref) > 1e-2  # the presets differ


# -- the default preset, input sizes, half precision -------------------------------------------------

def test_auto_takes_cp_lrp_for_a_transformer_and_says_so() -> None:
    from realtime_lrp import LRP
    from tests.test_registry import small_cnn

    vit = LRP(random_vit(*VIT_SIZES["tiny"]))
    assert vit.preset.name == "cp-lrp"
    assert vit.chosen == "preset auto: cp-lrp (the model has attention (matmul, projection, softmax nodes))"
    cnn = LRP(small_cnn())
    assert cnn.preset.name == "epsilon-plus-flat" and cnn.chosen == "preset auto: epsilon-plus-flat " \
        "(the model has no attention)"
    assert LRP(small_cnn(), preset="zplus").chosen is None


def test_a_vit_given_another_size_is_told_the_size_it_needs() -> None:
    from realtime_lrp import LRP

    lrp = LRP(random_vit(*VIT_SIZES["tiny"]))
    lrp(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"^Wrong image height! Expected 32 but got 48!$"):
        lrp(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"^Wrong image width! Expected 32 but got 40!$"):
        lrp(torch.randn(1, 3, 32, 40))


@pytest.mark.parametrize("preset", ["cp-lrp", "attnlrp"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps_equal_fp32_maps_up_to_rounding(preset: str, dtype: torch.dtype) -> None:
    """fp16/bf16 run the forward and the linear rules' products in half precision with the engine's
    per-sample power-of-two scaling, the other rules in fp32; the maps stay close to fp32's.

    How close depends on the CPU's half-precision kernels: over seeds 7-9, with ATEN_CPU_CAPABILITY
    default and avx512 (2026-12-04), the relative L2 error was 0.002-0.014 in fp16 and 0.017-0.045 in
    bf16 (LXT's own bf16 map is ~0.05 off by its max), 1 - cosine at most 1e-4 and 1e-3. The bounds
    leave twice that; that z is the forward's output, which a recomputed z would break at the
    percent level, is checked exactly in test_rules.py."""
    from realtime_lrp import LRP

    model = random_vit(*VIT_SIZES["wide"])
    torch.manual_seed(7)
    x, target = torch.randn(2, 3, 48, 48), torch.tensor([1, 3])
    ref = LRP(model, preset=preset)(x, target=target).relevance
    half = LRP(model, preset=preset, dtype=dtype)(x.to(dtype), target=target).relevance
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    l2 = (half - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    assert (l2 <= (0.03 if dtype == torch.float16 else 0.09)).all(), l2
    cos = torch.nn.functional.cosine_similarity(half.flatten(1), ref.flatten(1))
    assert (cos > (0.9998 if dtype == torch.float16 else 0.998)).all(), cos


# -- Swin: no library has it; Gradient x Input under the same held constants is the reference --------

def random_swin(seed: int = 0) -> torch.nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(seed)
    model = SwinTransformer([4, 4], 16, [2, 2], [2, 4], [4, 4], num_classes=5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif name.endswith("bias") or "relative_position_bias_table" in name:
                p.normal_(0.0, 0.3)
            elif p.dim() >= 2:
                p.normal_(0.0, (1 / p[0].numel()) ** 0.5)
    return model.eval()


def swin_cp_lrp_reference(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                          epsilon: float) -> torch.Tensor:
    """CP-LRP on Swin as Gradient x Input: the attention probabilities detached (torchvision's own
    shifted_window_attention, its F.softmax wrapped), LXT's LayerNorm and GELU patches, zennit's
    Epsilon on the conv and Linear modules in LXT's convention (qkv and proj are F.linear calls
    inside the attention, left to the gradient as in LXT's ViT recipe)."""
    import torch.nn.functional as F

    zcomposites = pytest.importorskip("zennit.composites")
    zrules = pytest.importorskip("zennit.rules")
    ztypes = pytest.importorskip("zennit.types")
    from tests.lxt_reference import efficient, restored, zennit_in_gradient_x_input

    patches = efficient()
    softmax = F.softmax
    x = x.clone().requires_grad_()
    composite = zcomposites.LayerMapComposite([(ztypes.Linear, zrules.Epsilon(epsilon=epsilon))])
    with restored(torch.nn.LayerNorm, "forward"), restored(torch.nn.GELU, "forward", "original_forward"), \
            restored(F, "softmax"), zennit_in_gradient_x_input():
        torch.nn.LayerNorm.forward = patches.layer_norm_forward
        patches.patch_method(patches.non_linear_forward, torch.nn.GELU, keep_original=True)
        F.softmax = lambda *args, **kwargs: softmax(*args, **kwargs).detach()
        with composite.context(model) as modified:
            out = modified(x)
            (grad,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return (x * grad).detach().sum(1)


@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
def test_swin_cp_lrp_equals_gradient_x_input_with_the_probabilities_held_constant(
        size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Shifted windows with the shift mask, the relative position bias, padding to whole windows
    (40 x 56 gives 10 x 14 tokens for windows of 4), patch merging. cp-lrp with LRP-0 on the conv
    and Linear modules too, as the reference (with epsilon 1e-6 on both sides the 32 x 32 case
    differs by 6.7e-4, the 40 x 56 one by 3e-5: not explained yet)."""
    import dataclasses

    from realtime_lrp import LRP
    from realtime_lrp.lrp import presets

    cp = presets.PRESETS["cp-lrp"]
    lrp0 = presets.rule("Epsilon", epsilon=1e-12)
    monkeypatch.setitem(presets.PRESETS, "cp-lrp-0", dataclasses.replace(
        cp, name="cp-lrp-0", rules={**cp.rules, "conv": lrp0, "linear": lrp0}))
    model = random_swin()
    torch.manual_seed(8)
    x, target = torch.randn(2, 3, *size), torch.tensor([1, 4])
    ref = swin_cp_lrp_reference(model, x, target, 1e-12)
    result = LRP(model, preset="cp-lrp-0")(x, target=target)
    assert torch.allclose(result.logits, model(x), atol=1e-5)
    assert ref.abs().amax() > 0
    assert rel_error(result.relevance, ref) <= 1e-4
    assert torch.isfinite(LRP(model, preset="attnlrp")(x, target=target).relevance).all()
