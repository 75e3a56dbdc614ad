"""Cubic B-spline upsampling as fixed convolutions: the residual base of the generator and the evaluation's baseline.

The baseline a user compares against is cubic B-spline interpolation, `scipy.ndimage.zoom(order=3,
mode="grid-mirror", grid_mode=True)` (`bundle.evaluation.protocol.upsample_baseline(lr, scale, "bspline")`).
A generator that learns its residual over that interpolation starts where the baseline ends. scipy cannot run
inside the network (no autograd, no TorchScript, no GPU), so `BSplineUpsample3D` computes the same thing with
fixed weights, separably, one axis at a time:

1. Half-sample symmetric extension of the input (`...c b a | a b c ... x y z | z y x...`), which is what scipy's
   "grid-mirror" does to the samples and to the spline coefficients (the extension is exact for any length,
   a one-voxel axis included: it is an index gather, not a single reflection).
2. The B-spline prefilter (the samples -> spline coefficients, exactly the recursive filter 6 / (z + 4 + 1/z)),
   whose impulse response is sqrt(3) * z1^|m| with z1 = sqrt(3) - 2, truncated where its tail falls below
   `PREFILTER_TOLERANCE` and renormalised to sum 1 (the DC gain of the exact filter).
3. The cubic B-spline kernel evaluated at the `s` sub-voxel phases of voxel-centred sampling (output voxel
   s*i + p sits at input coordinate i + (p + 0.5)/s - 0.5: -3/8, -1/8, 1/8, 3/8 for s = 4).

Steps 2 and 3 are folded into one FIR kernel per phase, a `conv1d` with `s` output channels whose outputs are
interleaved (the 1-D voxel shuffle). The kernels are non-persistent buffers: they move with `.to(device)` and
are built by TorchScript (`torch.jit.script`, as `monai.bundle ckpt_export` uses), but never enter a
`state_dict`, so a generator with this base has the same checkpoint keys as one without.

`bspline_resize` is the same interpolation to any output size per axis (the evaluation's baseline, the peer
benchmark's thick-slice baseline at factors such as 4.5): integer factors go through the very kernels the network
uses; another factor evaluates beta3 at each output voxel's input coordinate (i + 0.5) * n / size - 0.5 over the same
prefiltered, mirror-extended coefficients. One grid everywhere: input voxel i is centred at output s*i + (s - 1)/2.

Accuracy against scipy (float32 input, `tests/core/test_bspline.py`): equal to about 1e-6 of the intensity range
everywhere, borders included, because the extension is scipy's own; the truncated prefilter adds at most
`PREFILTER_TOLERANCE` of the largest absolute input value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bundle.core.geometry import ensure_scale3

__all__ = [
    "PREFILTER_TOLERANCE",
    "BSplineUpsample3D",
    "bspline_resize",
    "bspline_prefilter_taps",
    "bspline_phase_kernels",
    "cubic_bspline",
    "mirror_indices",
]

# worst-case error (a fraction of the largest |input|) that truncating the prefilter may add; 1e-6 keeps the
# result as close to scipy's as float32 allows and costs 2 x 11 + 1 prefilter taps
PREFILTER_TOLERANCE = 1e-6
_POLE = math.sqrt(3.0) - 2.0  # the pole z1 of the cubic B-spline prefilter, |z1| < 1


def cubic_bspline(t: float) -> float:
    """The centred cubic B-spline beta3(t): 2/3 - t^2 + |t|^3 / 2 on |t| < 1, (2 - |t|)^3 / 6 on 1 <= |t| < 2, else 0."""
    a = abs(t)
    if a < 1:
        return 2.0 / 3.0 - a * a + a**3 / 2.0
    return (2.0 - a) ** 3 / 6.0 if a < 2 else 0.0


# The kernels are computed in Python floats, not tensors, so that building a network under `torch.device("meta")`
# (the export's checkpoint check builds networks that way) never needs a tensor's value.


def bspline_prefilter_taps(tolerance: float = PREFILTER_TOLERANCE) -> list[float]:
    """Symmetric FIR approximation of the cubic B-spline prefilter: 2K + 1 taps, centre at index K.

    The exact filter is h[m] = sqrt(3) * z1^|m|; the dropped tail sum_{|m| > K} |h[m]| =
    2 sqrt(3) |z1|^(K+1) / (1 - |z1|) is kept below `tolerance`, and the taps are renormalised to sum 1 so that a
    constant volume stays exactly constant.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    pole = abs(_POLE)
    half = 0
    while 2 * math.sqrt(3.0) * pole ** (half + 1) / (1 - pole) > tolerance:
        half += 1
    taps = [math.sqrt(3.0) * _POLE ** abs(m) for m in range(-half, half + 1)]
    total = sum(taps)
    return [t / total for t in taps]


def bspline_phase_kernels(scale: int, tolerance: float = PREFILTER_TOLERANCE) -> torch.Tensor:
    """Prefilter and interpolation folded into one cross-correlation kernel per sub-voxel phase.

    Returns float64 weights of shape (scale, 1, 2P + 1), P = K + 2 (prefilter half-length K, plus the two
    neighbours each side that beta3 reaches), ready for `F.conv1d` on a line padded by P each side: output channel
    p at position i is the upsampled value at fine index scale * i + p.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    prefilter = bspline_prefilter_taps(tolerance)
    half = (len(prefilter) - 1) // 2
    pad = half + 2
    kernels = [[0.0] * (2 * pad + 1) for _ in range(scale)]  # index pad + o: input voxel i + o
    for p in range(scale):
        delta = (p + 0.5) / scale - 0.5  # where fine voxel s*i + p sits between coarse voxels
        for a in range(-2, 3):  # coefficient c[i + a] enters with weight beta3(delta - a)
            weight = cubic_bspline(delta - a)
            for m in range(-half, half + 1):  # c[i + a] = sum_m prefilter[m] f[i + a - m]
                kernels[p][pad + a - m] += weight * prefilter[half + m]
    return torch.tensor(kernels, dtype=torch.float64).unsqueeze(1)


def mirror_indices(length: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices into a line of `length` samples for positions -pad .. length + pad - 1 under half-sample symmetric
    extension (period 2 * length: index -1 -> 0, length -> length - 1), for any pad, even pad > length."""
    pos = torch.arange(-pad, length + pad, device=device)
    pos = torch.remainder(pos, 2 * length)
    return torch.where(pos >= length, 2 * length - 1 - pos, pos)


def _upsample_axis(x: torch.Tensor, dim: int, scale: int, kernels: torch.Tensor) -> torch.Tensor:
    """Upsample 5-D `x` along `dim` (2, 3 or 4) by `scale` with `kernels` (scale, 1, 2P + 1) of
    `bspline_phase_kernels`: (B, C, ..., n, ...) -> (B, C, ..., scale * n, ...)."""
    pad = (kernels.shape[-1] - 1) // 2
    n = x.shape[dim]
    line = x.index_select(dim, mirror_indices(n, pad, x.device)).movedim(dim, -1)
    shape = line.shape
    out = F.conv1d(line.reshape(-1, 1, n + 2 * pad), kernels)  # (N, scale, n): phase p of every voxel
    out = out.transpose(1, 2).reshape(shape[0], shape[1], shape[2], shape[3], n * scale)
    return out.movedim(-1, dim)


class BSplineUpsample3D(nn.Module):
    """Cubic B-spline upsampling by an integer factor per axis, voxel-centred, scipy "grid-mirror" borders.

    (B, C, X, Y, Z) -> (B, C, sx*X, sy*Y, sz*Z), equal to `scipy.ndimage.zoom(v, scale, order=3,
    mode="grid-mirror", grid_mode=True)` per (batch, channel) volume to about 1e-6 of the intensity range (see the
    module docstring). Computed in float64, which autocast leaves alone (eager and TorchScript alike), so that a
    bfloat16 autocast region does not cut the base to three significant digits; the output has the input's dtype.
    No learned weights, no state_dict entries (the kernels are non-persistent float64 buffers).
    """

    def __init__(self, scale: int | Sequence[int] = 4, tolerance: float = PREFILTER_TOLERANCE) -> None:
        super().__init__()
        self.scale = [int(s) for s in ensure_scale3(scale)]
        # one buffer per axis (TorchScript cannot index a list of buffers by a loop variable); unused when s = 1.
        # The declarations tell the type checker that these are tensors, not modules (no `# type:` comments:
        # TorchScript parses those)
        self.kernel_x: torch.Tensor
        self.kernel_y: torch.Tensor
        self.kernel_z: torch.Tensor
        self.register_buffer("kernel_x", bspline_phase_kernels(self.scale[0], tolerance), persistent=False)
        self.register_buffer("kernel_y", bspline_phase_kernels(self.scale[1], tolerance), persistent=False)
        self.register_buffer("kernel_z", bspline_phase_kernels(self.scale[2], tolerance), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> (B, C, sx*X, sy*Y, sz*Z)."""
        if x.dim() != 5:
            raise ValueError(f"expected a 5-D tensor (batch, channel, x, y, z), got shape {list(x.shape)}")
        # autocast never casts float64: the base keeps full precision inside a bf16/fp16 region (and `.double()` of a
        # kernel undoes nothing but a module-wide `.to(dtype)`, which would otherwise break the conv's dtype match)
        out = x.double()
        if self.scale[0] > 1:
            out = _upsample_axis(out, 2, self.scale[0], self.kernel_x.double())
        if self.scale[1] > 1:
            out = _upsample_axis(out, 3, self.scale[1], self.kernel_y.double())
        if self.scale[2] > 1:
            out = _upsample_axis(out, 4, self.scale[2], self.kernel_z.double())
        return out.to(x.dtype)


def _beta3(t: torch.Tensor) -> torch.Tensor:
    """`cubic_bspline` of every element of `t`."""
    a = t.abs()
    inner = 2.0 / 3.0 - a * a + a**3 / 2.0
    outer = (2.0 - a).clamp(min=0.0) ** 3 / 6.0
    return torch.where(a < 1, inner, outer)


def _resize_axis(x: torch.Tensor, dim: int, size: int, tolerance: float) -> torch.Tensor:
    """Cubic B-spline resampling of 5-D `x` along `dim` to `size` voxels, voxel-centred, "grid-mirror" borders."""
    n = x.shape[dim]
    prefilter = torch.tensor(bspline_prefilter_taps(tolerance), dtype=x.dtype, device=x.device)
    half = (len(prefilter) - 1) // 2
    pad = half + 2  # the coefficients at -2 .. n + 1: beta3 reaches two neighbours each side of any position
    line = x.index_select(dim, mirror_indices(n, pad, x.device)).movedim(dim, -1)
    shape = line.shape
    coeffs = F.conv1d(line.reshape(-1, 1, n + 2 * pad), prefilter.view(1, 1, -1)).reshape(*shape[:-1], n + 4)
    pos = (torch.arange(size, dtype=x.dtype, device=x.device) + 0.5) * n / size - 0.5
    base = pos.floor()
    out = torch.zeros(*shape[:-1], size, dtype=x.dtype, device=x.device)
    for a in (-1, 0, 1, 2):
        index = (base + a).long() + 2  # coefficient of input voxel base + a, stored at offset 2
        out = out + coeffs[..., index] * _beta3(pos - base - a)
    return out.movedim(-1, dim)


def bspline_resize(x: torch.Tensor, size: Sequence[int], tolerance: float = PREFILTER_TOLERANCE) -> torch.Tensor:
    """Cubic B-spline interpolation of (B, C, X, Y, Z) to `size` (3 ints), voxel-centred, scipy "grid-mirror"
    borders: `scipy.ndimage.zoom(v, size / shape, order=3, mode="grid-mirror", grid_mode=True)` to about 1e-6.

    An axis whose size is a whole multiple of the input's is upsampled with `BSplineUpsample3D`'s kernels (the same
    numbers as the network's base); any other size by evaluating beta3 at each output voxel's input coordinate.
    Computed in float64; the output has the input's dtype."""
    if x.dim() != 5 or len(size) != 3:
        raise ValueError(f"expected (batch, channel, x, y, z) and 3 sizes, got {list(x.shape)} and {list(size)}")
    out = x.double()
    for dim, target in zip((2, 3, 4), size, strict=True):
        n, target = out.shape[dim], int(target)
        if target < 1:
            raise ValueError(f"sizes must be >= 1, got {list(size)}")
        if target == n:
            continue
        if target % n == 0:
            out = _upsample_axis(out, dim, target // n, bspline_phase_kernels(target // n, tolerance).to(out.device))
        else:
            out = _resize_axis(out, dim, target, tolerance)
    return out.to(x.dtype)
