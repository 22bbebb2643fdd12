"""ROAD's noisy linear imputation (Rong et al., ICML 2022), batched on the device.

Pixel flipping sets removed pixels to a constant, and how far that constant lies from the
image decides much of the result (README: on Fashion-MNIST's black background, grey dots hurt
more than greying the item). ROAD (Remove And Debias) fills each removed pixel instead with the
weighted mean of its 8 neighbours (1/6 for the 4 direct ones, 1/12 for the diagonals; the
weights of neighbours outside the image are dropped), known or removed themselves, plus a
little Gaussian noise. That is a sparse linear system per image and channel: for each removed
pixel i with valid neighbours j,

    s_i · z_i − Σ_{j removed} w_ij · z_j = Σ_{j kept} w_ij · v_j,    s_i = Σ_j w_ij,

the discrete harmonic interpolation of the removed region from its border. pytorch-grad-cam and
Quantus build the system per image and solve it on the CPU (scipy's ``spsolve``). Here the matrix
is never built: it is a masked 3×3 stencil, symmetric positive (semi)definite, solved by
conjugate gradients for every image, step and channel of a batch at once. A removed region that
touches no kept pixel has no data; there the solution stays at 0, the model's mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NOISE = 0.01
"""Standard deviation of the noise added to imputed values, in the model's (normalised) input units,
as pytorch-grad-cam's and the paper's code use it."""


def _neighbours(u: Tensor) -> Tensor:
    """Σ_j w_ij · u_j over the 8 neighbours of each pixel, zero outside the image.

    The weights are ([1, 2, 1] ⊗ [1, 2, 1] − 4·centre) / 12: two 3-tap passes, cheaper than a
    3×3 convolution (and far cheaper than one in fp64 on a CPU).
    """
    p = F.pad(u, (1, 1, 0, 0))
    rows = p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]
    p = F.pad(rows, (0, 0, 1, 1))
    return (p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :] - 4 * u) / 12


def impute(x: Tensor, removed: Tensor, noise: float = NOISE, generator: torch.Generator | None = None,
           tol: float = 1e-5, check_every: int = 8) -> Tensor:
    """``x`` (B, C, H, W) with the pixels where ``removed`` (B, 1, H, W) is true filled in by noisy linear imputation.

    Conjugate gradients run in ``x``'s dtype until every system's residual is below ``tol``
    times its right-hand side's norm (checked every ``check_every`` iterations: one host sync each).
    """
    b, c, h, w = x.shape
    m = removed.to(x.dtype).expand(b, c, h, w).reshape(b * c, 1, h, w)
    v = x.reshape(b * c, 1, h, w)
    weights = _neighbours(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device))

    def apply(u: Tensor) -> Tensor:
        return m * (weights * u - _neighbours(m * u))

    rhs = m * _neighbours((1 - m) * v)
    z = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = r.square().sum((1, 2, 3), keepdim=True)
    limit = (tol * rhs.flatten(1).norm(dim=1)).view(-1, 1, 1, 1).square()
    for i in range(h * w):
        if i % check_every == 0 and bool((rr <= limit).all()):
            break
        ap = apply(p)
        pap = (p * ap).sum((1, 2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rr / pap.clamp(min=1e-30), torch.zeros_like(pap))
        z = z + alpha * p
        r = r - alpha * ap
        rr_new = r.square().sum((1, 2, 3), keepdim=True)
        p = r + torch.where(rr > 0, rr_new / rr.clamp(min=1e-30), torch.zeros_like(rr)) * p
        rr = rr_new
    filled = z.view(b, c, h, w)
    if noise:
        gen_device = generator.device if generator is not None else x.device
        filled = filled + noise * torch.randn(x.shape, generator=generator, device=gen_device).to(x.device, x.dtype)
    return torch.where(removed.expand_as(x), filled, x)
