"""A stream's state across frames, on the device: the stable colour scale and the moving average of maps.

Both are torch tensors updated in place with no host synchronisation, so the same code runs
eagerly on the CPU and inside a CUDA graph. Each holds ``slots`` rows: one row is one stream
(``rtlrp video``, ``rtlrp webcam``), whose frames are folded in order; a row per frame is the
batch of ``rtlrp serve``, where every frame belongs to another client. ``valid`` masks leave the
padding frames of a partial batch out of the state.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def percentile_rows(values: Tensor, percentile: float) -> Tensor:
    """``np.percentile(row, percentile)`` (linear interpolation) of each row of (N, M), on the device."""
    m = values.shape[1]
    position = percentile / 100.0 * (m - 1)
    low = int(math.floor(position))
    frac = position - low
    need = m - low  # the largest (m - low) values hold positions low .. m-1 in ascending order
    top = values.topk(min(need, m), dim=1, sorted=True).values
    lower = top[:, need - 1]
    upper = top[:, max(need - 2, 0)]
    return lower + (upper - lower) * frac


def _all(n: int, device: torch.device) -> Tensor:
    return torch.ones(n, dtype=torch.bool, device=device)


class StableScale:
    """Per-stream colour scale: an EMA of the ``percentile`` of ``|R|``, one update per frame.

    Frames are folded in one at a time and in order, so the scale a frame gets does not
    depend on how frames were batched. ``momentum`` is the weight of the newest frame
    (0.1 settles in about 10 frames). A map whose percentile is 0 (a very sparse map)
    falls back to its maximum; an all-zero or non-finite map leaves the scale unchanged
    (1.0 before any map had relevance).
    """

    def __init__(self, percentile: float = 99.5, momentum: float = 0.1, slots: int = 1,
                 device: torch.device | str = "cpu") -> None:
        self.percentile = percentile
        self.momentum = momentum
        self.value = torch.ones(slots, device=device)
        self.seen = torch.zeros(slots, dtype=torch.bool, device=device)

    def reset(self) -> None:
        """Forget the history (a new stream, or a change of method)."""
        self.seen.zero_()
        self.value.fill_(1.0)

    def state(self) -> tuple[Tensor, Tensor]:
        """A copy of the state (to keep across a CUDA graph's warm-up, or a redraw)."""
        return self.value.clone(), self.seen.clone()

    def restore(self, state: tuple[Tensor, Tensor]) -> None:
        """Put back a :meth:`state`, in place (captured graphs keep the tensors' addresses)."""
        self.value.copy_(state[0])
        self.seen.copy_(state[1])

    @staticmethod
    def frame_scale(relevance: Tensor, percentile: float = 99.5) -> Tensor:
        """The scale of each map (N, h, w) on its own, (N,): a high percentile of ``|R|``, its max if that is 0."""
        a = relevance.flatten(1).abs().float()
        q = percentile_rows(a, percentile)
        return torch.where(q > 0, q, a.amax(1))

    def update(self, relevance: Tensor, valid: Tensor | None = None) -> Tensor:
        """Fold in maps (N, h, w) (frames where ``valid`` is False are skipped); the scale of each, (N,).

        With one slot the frames are one stream, folded in order; with N slots frame i is row i.
        """
        q = self.frame_scale(relevance, self.percentile)
        ok = torch.isfinite(q) & (q > 0) & (valid if valid is not None else _all(q.shape[0], q.device))
        if self.value.shape[0] != 1:
            blended = torch.where(self.seen, (1 - self.momentum) * self.value + self.momentum * q, q)
            self.value.copy_(torch.where(ok, blended, self.value))
            self.seen.copy_(self.seen | ok)
            return torch.where(self.seen, self.value, torch.ones_like(self.value))
        scales = []
        for i in range(q.shape[0]):
            qi, oki = q[i:i + 1], ok[i:i + 1]
            blended = torch.where(self.seen, (1 - self.momentum) * self.value + self.momentum * qi, qi)
            self.value.copy_(torch.where(oki, blended, self.value))
            self.seen.copy_(self.seen | oki)
            scales.append(torch.where(self.seen, self.value, torch.ones_like(self.value)))
        return torch.cat(scales)


class MapSmoother:
    """Exponential moving average of a stream's relevance maps, kept on the maps' device.

    ``s_t = alpha * s_(t-1) + (1 - alpha) * R_t``; the first map after a reset is taken as
    it is, and ``alpha = 0`` passes maps through. Maps are folded in one at a time and in
    order, so batching does not change the result. It damps the frame-to-frame flicker of
    maps that move under imperceptible changes of the input (``rtlrp evaluate`` measures it).
    """

    def __init__(self, alpha: float, size: tuple[int, int], device: torch.device | str = "cpu",
                 slots: int = 1) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing {alpha} is outside [0, 1)")
        self.alpha = float(alpha)
        self.value = torch.zeros((slots, *size), dtype=torch.float32, device=device)
        self.seen = torch.zeros(slots, dtype=torch.bool, device=device)

    @property
    def active(self) -> bool:
        """Whether maps are smoothed at all (``alpha > 0``)."""
        return self.alpha > 0.0

    def reset(self) -> None:
        """Forget the history: the next map is taken as it is (new stream, new method)."""
        self.seen.fill_(False)

    def state(self) -> tuple[Tensor, Tensor]:
        """A copy of the running map and its flag."""
        return self.value.clone(), self.seen.clone()

    def restore(self, state: tuple[Tensor, Tensor]) -> None:
        """Put back a :meth:`state`, in place."""
        self.value.copy_(state[0])
        self.seen.copy_(state[1])

    def __call__(self, maps: Tensor, valid: Tensor | None = None) -> Tensor:
        """Fold in fp32 maps (N, h, w) in order (skipping frames where ``valid`` is False); the smoothed maps."""
        if not self.active:
            return maps
        ok = valid if valid is not None else _all(maps.shape[0], maps.device)
        if self.value.shape[0] != 1:
            seen = self.seen.view(-1, 1, 1)
            blended = torch.where(seen, self.alpha * self.value + (1.0 - self.alpha) * maps, maps)
            self.value.copy_(torch.where(ok.view(-1, 1, 1), blended, self.value))
            self.seen.copy_(self.seen | ok)
            return blended
        out = []
        for i in range(maps.shape[0]):
            r, oki = maps[i:i + 1], ok[i:i + 1]
            blended = torch.where(self.seen.view(1, 1, 1), self.alpha * self.value + (1.0 - self.alpha) * r, r)
            self.value.copy_(torch.where(oki.view(1, 1, 1), blended, self.value))
            self.seen.copy_(self.seen | oki)
            out.append(blended)
        return torch.cat(out)


class StreamState:
    """One stream's colour scale and smoothed map together: what ``rtlrp serve`` keeps per client."""

    def __init__(self, smooth: float, size: tuple[int, int], device: torch.device | str = "cpu",
                 slots: int = 1, percentile: float = 99.5, momentum: float = 0.1) -> None:
        self.scale = StableScale(percentile, momentum, slots, device)
        self.smoother = MapSmoother(smooth, size, device, slots)

    def reset(self) -> None:
        """Forget both."""
        self.scale.reset()
        self.smoother.reset()

    def state(self) -> tuple:
        """A copy of both (see :meth:`restore`)."""
        return self.scale.state(), self.smoother.state()

    def restore(self, state: tuple) -> None:
        """Put back a :meth:`state`, in place."""
        self.scale.restore(state[0])
        self.smoother.restore(state[1])

    def load_rows(self, streams: list["StreamState"]) -> None:
        """Row i takes stream i's state (device copies; rows past the streams keep theirs)."""
        for i, s in enumerate(streams):
            self.scale.value[i].copy_(s.scale.value[0])
            self.scale.seen[i].copy_(s.scale.seen[0])
            self.smoother.value[i].copy_(s.smoother.value[0])
            self.smoother.seen[i].copy_(s.smoother.seen[0])

    def store_rows(self, streams: list["StreamState"]) -> None:
        """Stream i takes row i's state back."""
        for i, s in enumerate(streams):
            s.scale.value[0].copy_(self.scale.value[i])
            s.scale.seen[0].copy_(self.scale.seen[i])
            s.smoother.value[0].copy_(self.smoother.value[i])
            s.smoother.seen[0].copy_(self.smoother.seen[i])
