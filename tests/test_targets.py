"""Target modes (CLRP, SGLRP) against slow references from the papers' definitions, and without host syncs."""
from __future__ import annotations


import pytest
import torch
import torchvision
from references import one_hot_logit, relative_error, signed_composite, zennit_relevance
from torch import nn

from realtime_lrp.lrp.engine import LRP
from realtime_lrp.lrp.targets import TARGET_MODES, target_mode


def vgg(seed: int = 0, classes: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.VGG(torchvision.models.vgg.make_layers([8, "M", 16, "M", 16], batch_norm=True),
                                   num_classes=classes)
    model.classifier[0] = nn.Linear(16 * 49, 32)
    model.classifier[3] = nn.Linear(32, 32)
    model.classifier[6] = nn.Linear(32, classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def zennit_vgg(model: nn.Module, x: torch.Tensor, output_relevance) -> torch.Tensor:
    """zennit's EpsilonPlusFlat maps (N, H, W) for a given relevance at the logits (a function of them)."""
    canonizers = pytest.importorskip("zennit.torchvision")
    return zennit_relevance(model, x, signed_composite("epsilon-plus-flat", [canonizers.VGGCanonizer()]),
                            output_relevance)


def clrp_reference(model, x, t) -> torch.Tensor:
    """Gu et al. 2018, CLRP1 as the authors' code starts it: R from |z_t|, R_dual from |z| of every other class;
    max(0, R/Σ|R| − R_dual/Σ|R_dual|), per sample with Python sums, then brought back to R's units (× Σ|R|)."""
    own = zennit_vgg(model, x, lambda out: one_hot_logit(out, t).abs())
    dual = zennit_vgg(model, x, lambda out: out.abs() * (1 - nn.functional.one_hot(t, out.shape[1])))
    maps = []
    for r, d in zip(own, dual):
        total_r, total_d = float(r.abs().sum()), float(d.abs().sum())
        maps.append(torch.clamp(r / total_r - d / total_d, min=0) * total_r)
    return torch.stack(maps)


def sglrp_reference(model, x, t) -> torch.Tensor:
    """Iwana et al. 2019: the output relevance is ∂p_t/∂z_n, taken here by autograd of the softmax."""
    def relevance(out):
        z = out.clone().requires_grad_()
        p = torch.softmax(z, dim=1)
        (grad,) = torch.autograd.grad(p.gather(1, t[:, None]).sum(), z)
        return grad
    return zennit_vgg(model, x, relevance)


@pytest.mark.parametrize("explicit", [False, True])
def test_contrastive_equals_clrp_from_its_definition(explicit: bool) -> None:
    model = vgg()
    x = torch.randn(3, 3, 28, 36, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1, 4, 2]) if explicit else model(x).argmax(1)
    result = LRP(model, target_mode="contrastive")(x, target=t if explicit else None)
    assert torch.equal(result.target, t) and result.logits.shape == (3, 6)
    assert result.relevance.shape == (3, 28, 36) and (result.relevance >= 0).all()
    ref = clrp_reference(model, x, t)
    assert (relative_error(result.relevance, ref) <= 1e-4).all()
    plain = LRP(model)(x, target=t).relevance
    assert not torch.allclose(result.relevance, plain.clamp(min=0), rtol=0.05)  # the dual took something away


def test_softmax_gradient_equals_sglrp_from_its_definition() -> None:
    model = vgg(seed=2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 5, 3])
    result = LRP(model, target_mode="softmax-gradient")(x, target=t)
    ref = sglrp_reference(model, x, t)
    assert (relative_error(result.relevance, ref) <= 1e-4).all()
    assert (result.relevance < 0).any() and (result.relevance > 0).any()  # other classes enter negatively


def test_modes_are_class_discriminative_where_plain_zplus_is_not() -> None:
    """On z+ the plain maps of two classes are nearly proportional; both modes separate them."""
    model = vgg(seed=4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))

    def r(mode: str) -> torch.Tensor:
        lrp = LRP(model, preset="zplus", target_mode=mode)
        a, b = (lrp(x, target=torch.tensor([c, c])).relevance.flatten(1) for c in (1, 3))
        return torch.stack([torch.corrcoef(torch.stack([u, v]))[0, 1] for u, v in zip(a, b)]).abs()

    plain = r("plain")
    assert (plain > 0.95).all()
    for mode in ("contrastive", "softmax-gradient"):
        assert (r(mode) < plain - 0.1).all(), mode


def test_plain_is_unchanged_and_bad_modes_are_one_line() -> None:
    model = vgg()
    x = torch.randn(2, 3, 32, 32)
    default = LRP(model)(x).relevance
    assert torch.equal(LRP(model, target_mode="plain")(x).relevance, default)
    with pytest.raises(ValueError, match="unknown target mode 'dual'; choose one of plain, contrastive, "
                                         "softmax-gradient"):
        LRP(model, target_mode="dual")
    with pytest.raises(ValueError, match="target 'softmax' needs the plain target mode"):
        LRP(model, target_mode="contrastive")(x, target="softmax")
    assert [target_mode(m).copies for m in TARGET_MODES] == [1, 2, 1]


@pytest.mark.parametrize("mode_name", ["contrastive", "softmax-gradient"])
def test_modes_run_in_the_captured_fp16_pass_without_host_syncs(mode_name: str) -> None:
    """The fake fp16 CUDA check of tests/test_capturable.py, for each mode, with and without the filter."""
    from test_capturable import CUDA, audited, fake_cuda, fake_input
    from torch._subclasses.fake_tensor import FakeTensorMode

    from realtime_lrp.pipeline.fast import channels_last_weights

    torch.manual_seed(0)
    mode = FakeTensorMode()
    model = fake_cuda(torchvision.models.vgg11_bn(num_classes=10), mode, torch.float16)
    for top_k in (0.0, 0.02):
        with mode:
            lrp = LRP(model, preset="epsilon-plus-flat", top_k=top_k, target_mode=mode_name)
            channels_last_weights(lrp)
            explicit = torch.tensor([3, 7], device=CUDA)
        x = fake_input(mode, 2, 64, 48)
        for target in (None, explicit):
            result, audit = audited(mode, lambda: lrp(x, target=target))
            assert audit.off_device == []
            assert result.relevance.shape == (2, 64, 48) and result.relevance.dtype == torch.float32
            assert result.relevance.device == CUDA and result.logits.shape == (2, 10)
