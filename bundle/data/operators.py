"""The degradation operators D (HR -> LR), their right inverses U (D U = I) and the projection, on one geometry.

Geometry, the same for every operator, every written affine (`bundle.core.geometry`) and the baselines: along an
axis with integer scale s, LR voxel i covers the HR voxels s*i .. s*i+s-1 and is centred on HR position
s*i + (s - 1)/2. It is the grid a scanner gives when the field of view is the same at both resolutions, and it is
symmetric: flipping an axis before or after an operator gives the same LR, so the storage orientation of a file
cannot move the result.

Every operator is separable: one (m, n) matrix per axis with scale s > 1 (m = n / s), applied along that axis
(`axis_matrix`); an axis with scale 1 is left untouched, so (1, 1, 4) is thick-slice mode.
- kspace: keep the m central bins of the axis' spectrum, sampled on the LR grid above (FOV-aligned truncation:
  LR[i] is the band-limited HR at s*i + (s-1)/2). An even m's Nyquist line is split into halves at -m/2 and +m/2,
  so the operator is real. Optional apodisation (the filters scanners apply: hamming, tukey, fermi) weights the
  kept bins; partial Fourier leaves the first lines of one axis out (zero-filled), which makes the LR complex:
  `acquire` takes its magnitude after adding noise.
- area: the mean of the s voxels (box slice profile, block average); with fwhm_factor != 1 a box slice profile of
  width fwhm_factor * s voxels centred on the same point, integrated over each HR voxel (a slice thinner than its
  spacing: a gap between slices), edges folded back by half-sample reflection.
- gaussian: a Gaussian slice profile of FWHM fwhm_factor * s voxels centred on the same point, integrated over
  each HR voxel, edges folded back by half-sample reflection.
U is per axis, of two shapes (`right_inverse`): the Moore-Penrose pseudo-inverse (minimum norm: nearest repetition
for area, the band-limited (Dirichlet) lift for kspace) or B (A B)^-1 with B the cubic B-spline interpolation (a
smooth correction); which one the consistency step uses per operator is measured in `bundle.trust.consistency`.
Volumes are (C, X, Y, Z) or batches (B, C, X, Y, Z).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from bundle.core.bspline import bspline_resize
from bundle.core.choices import METHODS, OPERATORS
from bundle.core.geometry import ensure_scale3

__all__ = [
    "APODISATIONS",
    "apodisation_window",
    "axis_matrix",
    "box_kernel",
    "check_sizes",
    "consistency_map",
    "degrade",
    "forward_operator",
    "gaussian_kernel",
    "kspace_matrix",
    "lr_centre",
    "profile_kernel",
    "profile_matrix",
    "project",
    "RIGHT_INVERSES",
    "right_inverse",
]

APODISATIONS = ("none", "hamming", "tukey", "fermi")
_DIMS = (-3, -2, -1)
RIGHT_INVERSES = ("minimum_norm", "bspline")
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
FERMI_RADIUS, FERMI_WIDTH = 0.9, 0.05  # of the LR Nyquist frequency: a scanner's usual Fermi filter


def lr_centre(i: float, s: int) -> float:
    """The HR position (in HR voxels) that LR voxel i of an axis with scale s is centred on: s*i + (s-1)/2."""
    return s * i + (s - 1) / 2.0


def check_sizes(spatial: Sequence[int], scale: tuple[int, int, int]) -> list[int]:
    """LR size per axis; one ValueError when an HR size does not divide by its scale."""
    if any(int(n) % s for n, s in zip(spatial, scale, strict=True)):
        raise ValueError(f"HR size {list(spatial)} must divide by the scale {list(scale)} (pad with DivisiblePadd)")
    return [int(n) // s for n, s in zip(spatial, scale, strict=True)]


def as_volume(x: torch.Tensor) -> torch.Tensor:
    """A plain float tensor with at least 3 spatial dims (MetaTensor dropped: the operators are pure maths)."""
    x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
    if x.ndim < 4:
        raise ValueError(f"expected a volume (C, X, Y, Z) or a batch (B, C, X, Y, Z), got shape {list(x.shape)}")
    return x if x.is_floating_point() or x.is_complex() else x.float()


# ---------------------------------------------------------------------------------------------------------------
# per-axis matrices


def apodisation_window(u: torch.Tensor, name: str = "none", tukey_alpha: float = 0.5) -> torch.Tensor:
    """The weight of a k-space bin at |f| = u * (LR Nyquist frequency), u in [0, 1]: 1 at the DC term (the mean
    is kept). hamming: 0.54 + 0.46 cos(pi u); tukey: flat up to 1 - alpha, then a cosine taper to 0 at u = 1;
    fermi: 1 / (1 + exp((u - 0.9) / 0.05))."""
    if name not in APODISATIONS:
        raise ValueError(f"apodisation must be one of {APODISATIONS}, got {name!r}")
    if name == "none":
        return torch.ones_like(u)
    if name == "hamming":
        return 0.54 + 0.46 * torch.cos(torch.pi * u)
    if name == "fermi":
        return torch.sigmoid(-(u - FERMI_RADIUS) / FERMI_WIDTH) / torch.sigmoid(
            torch.tensor(FERMI_RADIUS / FERMI_WIDTH, dtype=u.dtype)
        )
    if not 0.0 < tukey_alpha <= 1.0:
        raise ValueError(f"tukey_alpha must be in (0, 1], got {tukey_alpha}")
    taper = 0.5 * (1.0 + torch.cos(torch.pi * (u - (1.0 - tukey_alpha)) / tukey_alpha))
    return torch.where(u <= 1.0 - tukey_alpha, torch.ones_like(u), taper)


@functools.lru_cache(maxsize=128)
def kspace_matrix(
    n: int, s: int, apodisation: str = "none", tukey_alpha: float = 0.5, partial_fourier: float = 1.0
) -> torch.Tensor:
    """The (m, n) matrix of FOV-aligned k-space truncation along one axis (m = n // s): float64, or complex128
    when `partial_fourier` < 1 (the fraction of the m lines acquired; the missing ones are the most negative
    frequencies, zero-filled).

    K[i, j] = (1/n) sum_f w(f) exp(2 pi i f (s*i + (s-1)/2 - j) / n) over the kept bins f (an even m's Nyquist
    line as two halves at +-m/2); w = the apodisation window of |f| / (m/2). Rows sum to w(0) = 1.
    """
    m = n // s
    freqs = torch.arange(-(m // 2), m - m // 2, dtype=torch.float64)
    weight = torch.ones(m, dtype=torch.float64)
    if m % 2 == 0:
        freqs = torch.cat([freqs, torch.tensor([m / 2.0], dtype=torch.float64)])
        weight = torch.cat([weight, torch.ones(1, dtype=torch.float64)])
        weight[0] = weight[-1] = 0.5
    weight = weight * apodisation_window(freqs.abs() / (m / 2.0), apodisation, tukey_alpha)
    if not 0.5 <= partial_fourier <= 1.0:
        raise ValueError(f"partial_fourier must be in [0.5, 1], got {partial_fourier}")
    if partial_fourier < 1.0:
        missing = int(round((1.0 - partial_fourier) * m))
        line = torch.where(freqs >= m / 2.0, freqs - m, freqs)  # +m/2 is the same acquired line as -m/2
        weight = torch.where(line < -(m // 2) + missing, torch.zeros_like(weight), weight)
    offsets = torch.tensor([lr_centre(i, s) for i in range(m)], dtype=torch.float64)
    # K = A @ B / n with A[i, f] = w(f) exp(2 pi i f c_i / n), B[f, j] = exp(-2 pi i f j / n): O(n m) memory
    synthesis = weight * torch.exp(2j * torch.pi * offsets[:, None] * freqs[None, :] / n)
    analysis = torch.exp(-2j * torch.pi * freqs[:, None] * torch.arange(n, dtype=torch.float64)[None, :] / n)
    out = synthesis @ analysis / n
    return out if partial_fourier < 1.0 else out.real.contiguous()


@functools.lru_cache(maxsize=64)
def box_kernel(s: int, fwhm_factor: float = 1.0) -> tuple[int, torch.Tensor]:
    """(first offset t0, float64 weights) of a box slice profile of width fwhm_factor * s HR voxels centred on
    s*i + (s - 1)/2: each HR voxel weighted by the part of it inside the box, normalised to sum 1. Width s (factor
    1) is the block mean of `area`; a narrower box is a slice with a gap to the next."""
    if not fwhm_factor > 0:
        raise ValueError(f"fwhm_factor must be > 0, got {fwhm_factor}")
    half, centre = fwhm_factor * s / 2.0, lr_centre(0, s)
    t0, t1 = int(math.floor(centre - half + 0.5)), int(math.ceil(centre + half - 0.5))
    lower = torch.arange(t0, t1 + 1, dtype=torch.float64) - 0.5
    inside = torch.minimum(lower + 1.0, torch.tensor(centre + half)) - torch.maximum(lower, torch.tensor(centre - half))
    weights = inside.clamp_min(0.0)
    return t0, weights / weights.sum()


def profile_kernel(operator: str, s: int, fwhm_factor: float = 1.0) -> tuple[int, torch.Tensor]:
    """The banded kernel of a slice-profile operator: "gaussian" (`gaussian_kernel`) or "area" (`box_kernel`)."""
    if operator == "gaussian":
        return gaussian_kernel(s, fwhm_factor)
    if operator == "area":
        return box_kernel(s, fwhm_factor)
    raise ValueError(f"no slice-profile kernel for operator {operator!r}")


@functools.lru_cache(maxsize=64)
def gaussian_kernel(s: int, fwhm_factor: float = 1.0) -> tuple[int, torch.Tensor]:
    """(first offset t0, float64 weights) of the "gaussian" slice profile of one axis with scale s.

    LR voxel i = sum_t w[t] * HR[i*s + t0 + t]: a Gaussian of FWHM fwhm_factor * s HR voxels centred on
    s*i + (s - 1)/2, integrated over each HR voxel (so a thin profile tends to the voxel itself), cut at 4 sigma
    and normalised to sum 1.
    """
    if not fwhm_factor > 0:
        raise ValueError(f"fwhm_factor must be > 0, got {fwhm_factor}")
    sigma = fwhm_factor * s * _FWHM_TO_SIGMA
    centre = lr_centre(0, s)
    t0 = int(math.floor(centre - 4.0 * sigma))
    t1 = int(math.ceil(centre + 4.0 * sigma))
    edges = torch.arange(t0, t1 + 2, dtype=torch.float64) - 0.5 - centre
    cdf = 0.5 * (1.0 + torch.special.erf(edges / (sigma * math.sqrt(2.0))))
    weights = cdf[1:] - cdf[:-1]
    return t0, weights / weights.sum()


def _fold(index: torch.Tensor, n: int) -> torch.Tensor:
    """Half-sample reflection of integer positions into [0, n): -1 -> 0, n -> n - 1 (any number of folds)."""
    index = torch.remainder(index, 2 * n)
    return torch.where(index >= n, 2 * n - 1 - index, index)


@functools.lru_cache(maxsize=64)
def profile_matrix(n: int, s: int, fwhm_factor: float = 1.0, operator: str = "gaussian") -> torch.Tensor:
    """The (n // s, n) float64 matrix of one axis of a slice-profile degradation (`profile_kernel`: "gaussian", or
    "area" for a box of another width than s) with the volume's edges folded back by half-sample reflection;
    every row sums to 1."""
    t0, weights = profile_kernel(operator, s, fwhm_factor)
    m = n // s
    out = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):
        out[i].index_add_(0, _fold(torch.arange(i * s + t0, i * s + t0 + len(weights)), n), weights)
    return out


def _profile_axis(x: torch.Tensor, s: int, fwhm_factor: float, dim: int, operator: str = "gaussian") -> torch.Tensor:
    """`profile_matrix` applied along spatial `dim` as strided taps of the folded volume (equal to the product)."""
    n = x.shape[dim]
    m = n // s
    t0, weights = profile_kernel(operator, s, fwhm_factor)
    positions = _fold(torch.arange(t0, (m - 1) * s + t0 + len(weights)), n)
    padded = torch.index_select(x, dim % x.ndim, positions.to(x.device))
    lead = (slice(None),) * (dim % x.ndim)
    out = padded[lead + (slice(0, (m - 1) * s + 1, s),)] * float(weights[0])
    for t, w in enumerate(weights[1:].tolist(), start=1):
        out = out + padded[lead + (slice(t, t + (m - 1) * s + 1, s),)] * w
    return out


@functools.lru_cache(maxsize=64)
def _area_matrix(n: int, s: int) -> torch.Tensor:
    """(n // s, n): row i is 1/s on the HR voxels s*i .. s*i+s-1."""
    return torch.repeat_interleave(torch.eye(n // s, dtype=torch.float64), s, dim=1) / s


def axis_matrix(
    n: int,
    s: int,
    operator: str,
    fwhm_factor: float = 1.0,
    apodisation: str = "none",
    tukey_alpha: float = 0.5,
    partial_fourier: float = 1.0,
) -> torch.Tensor:
    """The (n // s, n) matrix of `operator` ("kspace", "area", "gaussian") along one axis of HR size n."""
    if operator == "kspace":
        return kspace_matrix(n, s, apodisation, float(tukey_alpha), float(partial_fourier))
    if operator == "area" and float(fwhm_factor) == 1.0:
        return _area_matrix(n, s)
    if operator in ("gaussian", "area"):
        return profile_matrix(n, s, float(fwhm_factor), operator)
    raise ValueError(f"operator must be one of {OPERATORS}, got {operator!r}")


@functools.lru_cache(maxsize=64)
def _pinv(n: int, s: int, operator: str, fwhm_factor: float) -> torch.Tensor:
    """Right inverse (n, n // s) of the un-apodised `axis_matrix`: A @ pinv(A) = I (A has full row rank)."""
    return torch.linalg.pinv(axis_matrix(n, s, operator, fwhm_factor))


@functools.lru_cache(maxsize=64)
def _bspline_inverse(n: int, s: int, operator: str, fwhm_factor: float) -> torch.Tensor:
    """Right inverse (n, n // s) B (A B)^-1 of the un-apodised `axis_matrix` A, B the cubic B-spline interpolation
    matrix (n // s -> n, voxel-centred, mirror borders): A @ it = I, and what it puts on the HR grid is a cubic
    B-spline of LR voxels (smooth), where the minimum-norm inverse puts blocks (block average) or ringing (k-space)."""
    m = n // s
    interpolation = bspline_resize(torch.eye(m, dtype=torch.float64).reshape(m, 1, m, 1, 1), (n, 1, 1))
    b = interpolation.reshape(m, n).T  # (n, m): column j is LR voxel j's B-spline on the HR grid
    return torch.linalg.solve((axis_matrix(n, s, operator, fwhm_factor) @ b).T, b.T).T


def _apply_axis(x: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """Multiply `x` along spatial `dim` (-3, -2 or -1) by `matrix` (out, in); complex if either is."""
    if matrix.is_complex() or x.is_complex():
        double = x.dtype in (torch.float64, torch.complex128)
        ctype = torch.complex128 if double else torch.complex64
        x, mat = x.to(ctype), matrix.to(device=x.device, dtype=ctype)
    else:
        mat = matrix.to(device=x.device, dtype=x.dtype)
    return torch.movedim(torch.movedim(x, dim, -1) @ mat.T, -1, dim)


def _nearest_up(x: torch.Tensor, scale: tuple[int, int, int]) -> torch.Tensor:
    """Repeat each voxel s times along each axis: LR (..., x, y, z) -> (..., x*sx, y*sy, z*sz)."""
    for dim, s in zip(_DIMS, scale, strict=True):
        if s > 1:
            x = torch.repeat_interleave(x, s, dim=dim)
    return x


# ---------------------------------------------------------------------------------------------------------------
# the operators on volumes


def apply_operator(
    x: torch.Tensor,
    scale: tuple[int, int, int],
    operator: str,
    fwhm_factor: float = 1.0,
    apodisation: str = "none",
    tukey_alpha: float = 0.5,
    partial_fourier: float = 1.0,
    partial_fourier_axis: int = 0,
) -> torch.Tensor:
    """D on the last three dims of any (..., X, Y, Z) tensor; complex only with partial Fourier."""
    check_sizes(x.shape[-3:], scale)
    if all(s == 1 for s in scale):
        return x.clone()  # never hand back the input itself
    if operator == "area" and float(fwhm_factor) == 1.0:  # the same matrix, done by pooling: exactly the block mean
        flat = x.reshape(-1, 1, *x.shape[-3:])
        out = F.avg_pool3d(flat, kernel_size=scale, stride=scale)
        return out.reshape(*x.shape[:-3], *out.shape[-3:])
    for axis, (dim, s) in enumerate(zip(_DIMS, scale, strict=True)):
        pf = partial_fourier if axis == partial_fourier_axis else 1.0
        # an axis with scale 1 is left alone, unless it is the partial-Fourier axis (identity plus the missing lines)
        if s == 1 and not (operator == "kspace" and pf < 1.0):
            continue
        if operator in ("gaussian", "area"):  # banded: a few strided taps per output, not a dense product
            x = _profile_axis(x, s, float(fwhm_factor), dim, operator)
            continue
        filtered = apodisation if s > 1 else "none"  # the filter weights the truncated band only
        matrix = axis_matrix(int(x.shape[dim]), s, operator, fwhm_factor, filtered, tukey_alpha, pf)
        x = _apply_axis(x, matrix, dim)
    return x.contiguous()


def degrade(
    hr: torch.Tensor,
    scale: int | Sequence[int],
    method: str = "kspace",
    *,
    apodisation: str = "none",
    tukey_alpha: float = 0.5,
    fwhm_factor: float = 1.0,
) -> torch.Tensor:
    """HR (C, X, Y, Z) -> LR (C, X/sx, Y/sy, Z/sz) by one deterministic, real degradation (no noise, no bias).

    kspace: FOV-aligned truncation to the central 1/s of k-space per axis, optionally apodised; area: mean over s
    voxels per axis; gaussian: Gaussian slice profile of FWHM `fwhm_factor` * s voxels; trilinear: linear
    resampling at the LR voxel centres. A (B, C, X, Y, Z) batch works too.
    """
    if method not in METHODS:
        raise ValueError(f"degradation method must be one of {METHODS}, got {method!r}")
    x, scale3 = as_volume(hr), ensure_scale3(scale)
    lr_size = check_sizes(x.shape[-3:], scale3)
    if method == "trilinear":  # align_corners=False samples LR voxel i at s*i + (s-1)/2: the same geometry
        flat = x.reshape(-1, 1, *x.shape[-3:])
        return F.interpolate(flat, size=lr_size, mode="trilinear", align_corners=False).reshape(*x.shape[:-3], *lr_size)
    return apply_operator(x, scale3, method, fwhm_factor, apodisation, tukey_alpha)


def _check_operator(operator: str) -> None:
    if operator not in OPERATORS:
        raise ValueError(f"consistency operator must be one of {OPERATORS}, got {operator!r}")


def forward_operator(
    sr: torch.Tensor, scale: int | Sequence[int], operator: str = "kspace", fwhm_factor: float = 1.0
) -> torch.Tensor:
    """D(sr): the deterministic degradation `operator` (no apodisation, no noise) of (B, C, X, Y, Z) or
    (C, X, Y, Z); equals degrade(sr, scale, operator, fwhm_factor=fwhm_factor)."""
    _check_operator(operator)
    return apply_operator(as_volume(sr), ensure_scale3(scale), operator, fwhm_factor)


def _check_lr(sr: torch.Tensor, lr: torch.Tensor, scale: tuple[int, int, int]) -> None:
    expected = [*sr.shape[:-3], *check_sizes(sr.shape[-3:], scale)]
    if list(lr.shape) != expected:
        raise ValueError(f"LR shape {list(lr.shape)} does not match SR shape {list(sr.shape)} / scale {list(scale)}")


def consistency_map(
    sr: torch.Tensor, lr: torch.Tensor, scale: int | Sequence[int], operator: str = "kspace", fwhm_factor: float = 1.0
) -> torch.Tensor:
    """|D(sr) - lr| repeated back onto the HR grid (nearest), the shape of `sr`: where the SR disagrees with
    what was measured."""
    scale3 = ensure_scale3(scale)
    x, y = as_volume(sr), as_volume(lr).to(sr.device)
    _check_lr(x, y, scale3)
    return _nearest_up((forward_operator(x, scale3, operator, fwhm_factor) - y).abs(), scale3)


def right_inverse(
    r: torch.Tensor,
    hr_size: Sequence[int],
    scale: int | Sequence[int],
    operator: str,
    fwhm_factor: float = 1.0,
    shape: str = "minimum_norm",
) -> torch.Tensor:
    """U r with D U = I: LR (..., x, y, z) -> (..., X, Y, Z). `shape` (one of RIGHT_INVERSES): "minimum_norm", the
    HR volume of least energy that D maps onto r (blocks for block average, sinc for k-space); "bspline", a cubic
    B-spline of LR voxels that D maps onto r (`_bspline_inverse`)."""
    _check_operator(operator)
    if shape not in RIGHT_INVERSES:
        raise ValueError(f"right inverse shape must be one of {RIGHT_INVERSES}, got {shape!r}")
    scale3 = ensure_scale3(scale)
    if operator == "area" and float(fwhm_factor) == 1.0 and shape == "minimum_norm":
        return _nearest_up(r, scale3)
    inverse = _pinv if shape == "minimum_norm" else _bspline_inverse
    for dim, s, n in zip(_DIMS, scale3, hr_size, strict=True):
        if s > 1:
            r = _apply_axis(r, inverse(int(n), s, operator, float(fwhm_factor)), dim)
    return r


def project(
    sr: torch.Tensor,
    lr: torch.Tensor,
    scale: int | Sequence[int],
    operator: str = "kspace",
    fwhm_factor: float = 1.0,
    detail_gain: float = 1.0,
    inverse: str = "minimum_norm",
) -> torch.Tensor:
    """U lr + g (sr - U D sr), U the right inverse of shape `inverse` (`right_inverse`), g = `detail_gain`: takes
    what D sees from `lr` and keeps what D does not see of `sr`, scaled by g, so that D(output) = lr for every g and
    U. With g = 1 it is sr + U(lr - D(sr)), a projection (orthogonal for the minimum-norm U); g < 1 shrinks the
    network's unmeasured detail towards U lr (g = 0), the least-squares choice when that detail is only partly
    right. (B, C, X, Y, Z) or (C, X, Y, Z), the shape and dtype of `sr`; computed in float64 so the consistency
    holds to ~1e-7 of the intensity range after the cast back."""
    if not 0.0 <= detail_gain <= 1.0:
        raise ValueError(f"detail_gain must be in [0, 1], got {detail_gain}")
    scale3 = ensure_scale3(scale)
    _check_operator(operator)
    x = as_volume(sr)
    y = as_volume(lr).to(x.device)
    _check_lr(x, y, scale3)
    x64, y64 = x.double(), y.double()
    size = x.shape[-3:]
    # U lr + g (sr - U D sr) = g sr + U(lr - g D sr): U is linear, so one right inverse serves both terms
    seen = apply_operator(x64, scale3, operator, fwhm_factor)
    out = detail_gain * x64 + right_inverse(y64 - detail_gain * seen, size, scale3, operator, fwhm_factor, inverse)
    return out.to(x.dtype)
