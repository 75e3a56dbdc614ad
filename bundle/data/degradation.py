"""Degradation models HR -> LR for training, and data-consistency operators for inference.

A network trained on one simulated degradation (k-space truncation) does worse than trilinear interpolation on
scans degraded otherwise. Training therefore draws the degradation per volume and per epoch
(`RandomDegradationd`, after the cache), and inference can check or enforce D(SR) = LR with the same D
(`forward_operator`, `consistency_map`, `project`).

Volumes are channel-first tensors (C, X, Y, Z); the operators also take batches (B, C, X, Y, Z). `scale` is a
per-axis triple of ints (an int means the same on every axis); an axis with scale 1 is left untouched, so
(1, 1, 4) is thick-slice mode. The LR voxel i of an axis with scale s covers the HR voxels i*s .. i*s+s-1.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from bundle.core.choices import EVAL_METHODS, LR_METHODS, METHODS, NOISE_MAX, NOISY_LR_SIGMA, OPERATORS
from bundle.core.geometry import ensure_scale3, low_resolution_affine
from bundle.data.transforms import source_name

__all__ = [
    "METHODS",
    "APODISATIONS",
    "OPERATORS",
    "DegradationParams",
    "RandomDegradationd",
    "SimulateLowResolutiond",
    "LR_METHODS",
    "apodisation_window",
    "apply_degradation",
    "bias_field",
    "consistency_map",
    "degrade",
    "draw_degradation",
    "check_evaluation_methods",
    "evaluation_lr",
    "evaluation_operator",
    "forward_operator",
    "gaussian_kernel",
    "gaussian_matrix",
    "project",
    "rician_noise",
    "robust_max",
]

APODISATIONS = ("none", "hamming", "tukey")
_DIMS = (-3, -2, -1)
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _check_sizes(spatial: Sequence[int], scale: tuple[int, int, int]) -> list[int]:
    """LR size per axis; one ValueError when an HR size does not divide by its scale."""
    if any(int(n) % s for n, s in zip(spatial, scale, strict=True)):
        raise ValueError(f"HR size {list(spatial)} must divide by the scale {list(scale)} (pad with DivisiblePadd)")
    return [int(n) // s for n, s in zip(spatial, scale, strict=True)]


def _as_volume(x: torch.Tensor) -> torch.Tensor:
    """A plain float tensor with at least 3 spatial dims (MetaTensor dropped: the operators are pure maths)."""
    x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
    if x.ndim < 4:
        raise ValueError(f"expected a volume (C, X, Y, Z) or a batch (B, C, X, Y, Z), got shape {list(x.shape)}")
    return x if x.is_floating_point() else x.float()


# ---------------------------------------------------------------------------------------------------------------
# per-axis building blocks


def apodisation_window(m: int, name: str = "none", tukey_alpha: float = 0.5) -> torch.Tensor:
    """Weights (m,) for the kept k-space bins of one axis, in fftshift order (frequency -m//2 first).

    The weight is a function of |f| / (m/2), 1 at the DC term (so the mean is kept) and, for tukey, 0 at the
    LR Nyquist frequency. hamming: 0.54 + 0.46 cos(pi u); tukey: flat up to 1 - alpha, then a cosine taper.
    """
    if name not in APODISATIONS:
        raise ValueError(f"apodisation must be one of {APODISATIONS}, got {name!r}")
    u = (torch.arange(m, dtype=torch.float64) - m // 2).abs() / (m / 2.0)
    if name == "none":
        return torch.ones(m, dtype=torch.float64)
    if name == "hamming":
        return 0.54 + 0.46 * torch.cos(torch.pi * u)
    if not 0.0 < tukey_alpha <= 1.0:
        raise ValueError(f"tukey_alpha must be in (0, 1], got {tukey_alpha}")
    taper = 0.5 * (1.0 + torch.cos(torch.pi * (u - (1.0 - tukey_alpha)) / tukey_alpha))
    return torch.where(u <= 1.0 - tukey_alpha, torch.ones_like(u), taper)


@functools.lru_cache(maxsize=64)
def gaussian_kernel(s: int, fwhm_factor: float = 1.0) -> tuple[int, torch.Tensor]:
    """(first offset t0, float64 weights) of the "gaussian" slice profile of one axis with scale s.

    LR voxel i = sum_t w[t] * HR[i*s + t0 + t]: a Gaussian of FWHM fwhm_factor * s HR voxels centred on
    i*s + (s - 1)/2 (the centre of the HR voxels i*s .. i*s+s-1, as for "area"), integrated over each HR voxel
    (so a thin profile tends to the voxel itself), cut at 4 sigma and normalised to sum 1.
    """
    if not fwhm_factor > 0:
        raise ValueError(f"fwhm_factor must be > 0, got {fwhm_factor}")
    sigma = fwhm_factor * s * _FWHM_TO_SIGMA
    centre = (s - 1) / 2.0
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


def _gaussian_taps(n: int, s: int, fwhm_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR positions folded into [0, n) that the taps read, weights): LR voxel i reads positions[i*s + t]."""
    t0, weights = gaussian_kernel(s, fwhm_factor)
    m = n // s
    positions = _fold(torch.arange(t0, (m - 1) * s + t0 + len(weights)), n)
    return positions, weights


@functools.lru_cache(maxsize=64)
def gaussian_matrix(n: int, s: int, fwhm_factor: float = 1.0) -> torch.Tensor:
    """The (n // s, n) float64 matrix of one axis of the "gaussian" degradation (`gaussian_kernel` with the
    volume's edges folded back by half-sample reflection); every row sums to 1."""
    positions, weights = _gaussian_taps(n, s, fwhm_factor)
    m = n // s
    out = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):
        out[i].index_add_(0, positions[i * s : i * s + len(weights)], weights)
    return out


def _gaussian_axis(x: torch.Tensor, s: int, fwhm_factor: float, dim: int) -> torch.Tensor:
    """Apply `gaussian_matrix` along spatial `dim` as strided taps (banded: a few passes, not a dense product)."""
    n = x.shape[dim]
    m = n // s
    positions, weights = _gaussian_taps(n, s, fwhm_factor)
    padded = torch.index_select(x, dim % x.ndim, positions.to(x.device))
    lead = (slice(None),) * (dim % x.ndim)
    taps = [padded[lead + (slice(t, t + (m - 1) * s + 1, s),)] for t in range(len(weights))]
    out = taps[0] * float(weights[0])
    for tap, w in zip(taps[1:], weights[1:].tolist(), strict=True):
        out.add_(tap, alpha=w)
    return out


@functools.lru_cache(maxsize=64)
def _gaussian_pinv(n: int, s: int, fwhm_factor: float) -> torch.Tensor:
    """Right inverse (n, n // s) of `gaussian_matrix`: G @ pinv(G) = I (G has full row rank)."""
    return torch.linalg.pinv(gaussian_matrix(n, s, fwhm_factor))


def _apply_axis(x: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """Multiply `x` along spatial `dim` (-3, -2 or -1) by `matrix` (out, in)."""
    mat = matrix.to(device=x.device, dtype=x.dtype)
    return torch.movedim(torch.movedim(x, dim, -1) @ mat.T, -1, dim)


def _nearest_up(x: torch.Tensor, scale: tuple[int, int, int]) -> torch.Tensor:
    """Repeat each voxel s times along each axis: LR (..., x, y, z) -> (..., x*sx, y*sy, z*sz)."""
    for dim, s in zip(_DIMS, scale, strict=True):
        if s > 1:
            x = torch.repeat_interleave(x, s, dim=dim)
    return x


# ---------------------------------------------------------------------------------------------------------------
# degradations


def _kspace(x: torch.Tensor, lr_size: Sequence[int], window: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Keep the central LR-sized block of k-space (the reference study's simulation).

    "forward" normalisation: the DC term is the mean on both grids, so the mean intensity is kept.
    `window`: per-axis weights (fftshift order) multiplied onto the kept block (apodisation).
    """
    spatial = x.shape[-3:]
    k = torch.fft.fftshift(torch.fft.fftn(x, dim=_DIMS, norm="forward"), dim=_DIMS)
    starts = [
        n // 2 - m // 2 for n, m in zip(spatial, lr_size, strict=True)
    ]  # keeps the DC term at the LR grid's centre
    k = k[
        ..., starts[0] : starts[0] + lr_size[0], starts[1] : starts[1] + lr_size[1], starts[2] : starts[2] + lr_size[2]
    ]
    if window is not None:
        wx, wy, wz = (w.to(device=x.device, dtype=x.dtype) for w in window)
        k = k * (wx[:, None, None] * wy[None, :, None] * wz[None, None, :])
    lr = torch.fft.ifftn(torch.fft.ifftshift(k, dim=_DIMS), dim=_DIMS, norm="forward")
    return lr.real.contiguous()


def _degrade(
    x: torch.Tensor,
    scale: tuple[int, int, int],
    method: str,
    apodisation: str = "none",
    tukey_alpha: float = 0.5,
    fwhm_factor: float = 1.0,
) -> torch.Tensor:
    """`degrade` on the last three dims of any (..., X, Y, Z) float tensor."""
    if method not in METHODS:
        raise ValueError(f"degradation method must be one of {METHODS}, got {method!r}")
    lr_size = _check_sizes(x.shape[-3:], scale)
    lead = x.shape[:-3]
    if method == "kspace":
        if apodisation == "none":
            return _kspace(x, lr_size)
        window = [
            apodisation_window(m, apodisation, tukey_alpha) if s > 1 else torch.ones(m, dtype=torch.float64)
            for m, s in zip(lr_size, scale, strict=True)
        ]
        return _kspace(x, lr_size, window)
    if method == "gaussian":
        if all(s == 1 for s in scale):
            return x.clone()  # never hand back the input itself
        for dim, s in zip(_DIMS, scale, strict=True):
            if s > 1:
                x = _gaussian_axis(x, s, float(fwhm_factor), dim)
        return x.contiguous()
    flat = x.reshape(-1, 1, *x.shape[-3:])
    if method == "area":
        out = F.avg_pool3d(flat, kernel_size=scale, stride=scale)
    else:
        out = F.interpolate(flat, size=lr_size, mode="trilinear", align_corners=False)
    return out.reshape(*lead, *lr_size)


def degrade(
    hr: torch.Tensor,
    scale: int | Sequence[int],
    method: str = "kspace",
    *,
    apodisation: str = "none",
    tukey_alpha: float = 0.5,
    fwhm_factor: float = 1.0,
) -> torch.Tensor:
    """HR (C, X, Y, Z) -> LR (C, X/sx, Y/sy, Z/sz) by one deterministic degradation (no noise, no bias).

    kspace: keep the central 1/s of k-space per axis, optionally apodised ("hamming", or "tukey" with
    `tukey_alpha`); without apodisation this is the reference study's simulation (`lr_method: kspace`).
    area: mean over s voxels per axis. gaussian: Gaussian slice profile of FWHM `fwhm_factor` * s voxels on
    each axis with s > 1, then one sample per s voxels aligned as for area. trilinear: linear resampling.
    A (B, C, X, Y, Z) batch works too.
    """
    return _degrade(_as_volume(hr), ensure_scale3(scale), method, apodisation, tukey_alpha, fwhm_factor)


def robust_max(x: torch.Tensor, q: float = 0.995) -> float:
    """The q-quantile of a volume's values (on a strided subsample of at most ~1M voxels): its robust max."""
    flat = torch.as_tensor(x).detach().reshape(-1).float()
    if flat.numel() > 1_000_000:
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    return float(torch.quantile(flat, q))


def rician_noise(
    x: torch.Tensor, sigma: float, generator: torch.Generator | None = None, reference: float | None = None
) -> torch.Tensor:
    """Magnitude of the volume plus complex Gaussian noise: sqrt((x + n1)^2 + n2^2), never negative.

    `sigma` is relative to `reference` (default: the volume's robust max), so 0.02 is 2% of the bright tissue
    for volumes scaled to about [0, 1]. Noise is drawn on the CPU from `generator` (reproducible).
    """
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x
    ref = robust_max(x) if reference is None else float(reference)
    std = sigma * max(ref, 1e-6)
    noise = torch.randn((2, *x.shape), generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    return torch.sqrt((x + std * noise[0]) ** 2 + (std * noise[1]) ** 2)


def check_evaluation_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """`methods` as a tuple, after one ValueError naming the config id when it is empty or names an unknown
    degradation (the evaluation and the calibration check it when built, before any model is loaded)."""
    bad_methods = [m for m in methods if m not in EVAL_METHODS]
    if not methods or bad_methods:
        raise ValueError(f"eval_lr_methods: {bad_methods or 'empty'}; choose from {EVAL_METHODS}")
    return tuple(methods)


def evaluation_lr(hr: torch.Tensor, scale: int | Sequence[int], method: str, case: str) -> torch.Tensor:
    """The LR (C, X/sx, Y/sy, Z/sz) an evaluation or calibration scores a volume (C, X, Y, Z) under.

    `method` is one of `EVAL_METHODS`: a fixed degradation of `degrade`, or "noisy": the Gaussian slice profile,
    then Rician noise of NOISY_LR_SIGMA of the LR's robust max, drawn from a generator seeded by `case` (the
    volume's name, `bundle.data.datalist.case_name`), so that the evaluation, the calibration and the reader study
    see the same noisy LR of a scan. The noise is the training's (`apply_degradation`), at its largest sigma.
    """
    if method not in EVAL_METHODS:
        raise ValueError(f"evaluation degradation must be one of {EVAL_METHODS}, got {method!r}")
    if method != "noisy":
        return degrade(hr, scale, method)
    if not case:
        raise ValueError("the noisy degradation needs the case name: it seeds the noise")
    params = DegradationParams("gaussian", noise_sigma=NOISY_LR_SIGMA, noise_seed=zlib.crc32(f"noisy:{case}".encode()))
    return apply_degradation(hr, scale, params)[1]


def evaluation_operator(method: str) -> str | None:
    """The consistency operator that models an evaluation degradation (None where the trust layer has none):
    the degradation itself, or for "noisy" its slice profile (noise is not part of D)."""
    operator = "gaussian" if method == "noisy" else method
    return operator if operator in OPERATORS else None


def _bias_polynomial(spatial: Sequence[int], coefficients: Sequence[float]) -> torch.Tensor:
    """sum_k c_k * term_k over the grid, coordinates in [-1, 1] per axis; terms: x, y, z, P2(x), P2(y), P2(z),
    xy, xz, yz (P2(t) = (3t^2 - 1) / 2)."""
    cx, cy, cz = (torch.linspace(-1.0, 1.0, int(n), dtype=torch.float32) if n > 1 else torch.zeros(1) for n in spatial)
    c = [float(v) for v in coefficients]
    if len(c) != 9:
        raise ValueError(f"a bias field needs 9 polynomial coefficients, got {len(c)}")

    def p2(t: torch.Tensor) -> torch.Tensor:
        return 1.5 * t * t - 0.5

    x, y, z = cx[:, None, None], cy[None, :, None], cz[None, None, :]
    # three planes summed into one volume: two full passes instead of one per term
    p = (c[0] * x + c[3] * p2(x) + c[1] * y + c[4] * p2(y) + c[6] * x * y) + (c[7] * x * z + c[2] * z + c[5] * p2(z))
    return p.add_(c[8] * y * z)


def bias_field(spatial: Sequence[int], strength: float, coefficients: Sequence[float]) -> torch.Tensor:
    """A smooth multiplicative field (X, Y, Z) = exp(log(1 + strength) * p / max|p|), p a quadratic polynomial.

    The field lies in [1 / (1 + strength), 1 + strength] and reaches one of the bounds; strength 0 gives ones.
    """
    if strength < 0:
        raise ValueError(f"bias strength must be >= 0, got {strength}")
    if strength == 0:
        return torch.ones(*[int(n) for n in spatial])
    p = _bias_polynomial(spatial, coefficients)
    low, high = torch.aminmax(p)
    peak = max(-float(low), float(high))
    if peak < 1e-12:
        return torch.ones_like(p)
    return p.mul_(math.log1p(strength) / peak).exp_()


# ---------------------------------------------------------------------------------------------------------------
# random degradation


@dataclass(frozen=True)
class DegradationParams:
    """One draw of the training degradation; `record()` is what goes into the data dict (plain scalars)."""

    method: str = "kspace"
    apodisation: str = "none"
    tukey_alpha: float = 0.0
    fwhm_factor: float = 1.0
    noise_sigma: float = 0.0
    bias_strength: float = 0.0
    bias_coefficients: tuple[float, ...] = field(default=(0.0,) * 9)
    noise_seed: int = 0

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        del out["bias_coefficients"]
        return out


def draw_degradation(
    rng: np.random.Generator,
    method: str = "random",
    noise_max: float = NOISE_MAX,
    bias_max: float = 0.15,
    methods: Sequence[str] = METHODS,
    fwhm_range: tuple[float, float] = (0.5, 1.5),
    tukey_range: tuple[float, float] = (0.2, 0.8),
) -> DegradationParams:
    """Draw one degradation from `rng`: the same generator state gives the same parameters.

    method "random": uniform over `methods`; kspace apodisation uniform over none/hamming/tukey (alpha ~
    U(tukey_range)); gaussian fwhm_factor ~ U(fwhm_range). A fixed method keeps degrade()'s defaults (no
    apodisation, fwhm_factor 1). Always: noise sigma ~ U(0, noise_max), bias strength ~ U(0, bias_max).
    The same number of values is drawn whatever the method, so one choice does not shift the others.
    """
    if method != "random" and method not in METHODS:
        raise ValueError(f"degradation method must be 'random' or one of {METHODS}, got {method!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"random degradation methods must be a non-empty subset of {METHODS}, got {list(methods)}")
    if noise_max < 0 or bias_max < 0:
        raise ValueError(f"noise_max and bias_max must be >= 0, got {noise_max}, {bias_max}")
    pick = int(rng.integers(len(methods)))
    apod = APODISATIONS[int(rng.integers(len(APODISATIONS)))]
    alpha = float(rng.uniform(*tukey_range))
    fwhm = float(rng.uniform(*fwhm_range))
    sigma = float(rng.uniform(0.0, noise_max)) if noise_max > 0 else 0.0
    strength = float(rng.uniform(0.0, bias_max)) if bias_max > 0 else 0.0
    coefficients = tuple(float(v) for v in rng.uniform(-1.0, 1.0, size=9))
    noise_seed = int(rng.integers(2**31 - 1))
    if method == "random":
        method = str(methods[pick])
        if method != "kspace":
            apod = "none"
        if method != "gaussian":
            fwhm = 1.0
    else:
        apod, fwhm = "none", 1.0
    return DegradationParams(
        method=method,
        apodisation=apod,
        tukey_alpha=alpha if apod == "tukey" else 0.0,
        fwhm_factor=fwhm,
        noise_sigma=sigma,
        bias_strength=strength,
        bias_coefficients=coefficients,
        noise_seed=noise_seed,
    )


def apply_degradation(
    hr: torch.Tensor, scale: int | Sequence[int], params: DegradationParams, bias_target: str = "pair"
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(biased HR or None, LR) for one drawn degradation of a volume (C, X, Y, Z).

    bias_target "pair": the bias field multiplies the HR before degrading, so the pair stays consistent
    (LR = D(HR') before noise) and the network learns to keep the input's intensities rather than to remove
    a bias; the biased HR is returned to replace the target. "lr": only the LR is biased (None returned).
    Rician noise goes on the LR only (the target stays clean), which is never negative after it.
    """
    if bias_target not in ("pair", "lr"):
        raise ValueError(f"bias_target must be 'pair' or 'lr', got {bias_target!r}")
    scale3 = ensure_scale3(scale)
    x = _as_volume(hr)
    new_hr = None
    if params.bias_strength > 0 and bias_target == "pair":
        x = new_hr = x * bias_field(x.shape[-3:], params.bias_strength, params.bias_coefficients).to(x.device, x.dtype)
    lr = _degrade(x, scale3, params.method, params.apodisation, params.tukey_alpha, params.fwhm_factor)
    if params.bias_strength > 0 and bias_target == "lr":
        lr = lr * bias_field(lr.shape[-3:], params.bias_strength, params.bias_coefficients).to(lr.device, lr.dtype)
    if params.noise_sigma > 0:
        generator = torch.Generator().manual_seed(params.noise_seed)
        lr = rician_noise(lr, params.noise_sigma, generator).clamp_min(0.0)
    return new_hr, lr


class RandomDegradationd(Randomizable, MapTransform):
    """Make the LR under `lr_key` from the HR under `keys` with a degradation drawn at every call.

    Meant to run after a CacheDataset's cache (the cached item holds the normalised, padded HR only), so each
    epoch sees each volume degraded differently; reproducible from `set_random_state(seed)`, which
    EpochSeedHandler calls with (seed, epoch) at every epoch. The drawn parameters go to `record_key` as plain
    scalars (see DegradationParams.record) for the training log. With a fixed `method` and noise_max =
    bias_max = 0 the LR equals `degrade(hr, scale, method)`.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        lr_key: str = "lr",
        scale: int | Sequence[int] = 4,
        method: str = "random",
        noise_max: float = NOISE_MAX,
        bias_max: float = 0.15,
        methods: Sequence[str] = METHODS,
        fwhm_range: Sequence[float] = (0.5, 1.5),
        bias_target: str = "pair",
        record_key: str | None = "degradation",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lr_key, self.record_key = lr_key, record_key
        self.scale = ensure_scale3(scale)
        self.options: dict[str, Any] = {
            "method": method,
            "noise_max": float(noise_max),
            "bias_max": float(bias_max),
            "methods": tuple(methods),
            "fwhm_range": (float(fwhm_range[0]), float(fwhm_range[1])),
        }
        if bias_target not in ("pair", "lr"):
            raise ValueError(f"bias_target must be 'pair' or 'lr', got {bias_target!r}")
        self.bias_target = bias_target
        draw_degradation(np.random.default_rng(0), **self.options)  # bad options fail here, not in a worker
        self.params = DegradationParams()

    def randomize(self, data: Any = None) -> None:
        rng = np.random.default_rng(int(self.R.randint(0, 2**31 - 1)))
        self.params = draw_degradation(rng, **self.options)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            hr = d[key]
            self.randomize()
            try:
                new_hr, lr = apply_degradation(hr, self.scale, self.params, self.bias_target)
            except ValueError as err:
                raise ValueError(f"{source_name(hr)}: {err}") from None
            _with_lr(d, key, self.lr_key, hr, new_hr, lr, self.scale)
            if self.record_key is not None:
                d[self.record_key] = self.params.record()
        return d


def _with_lr(d: dict, key: Hashable, lr_key: str, hr: Any, new_hr: torch.Tensor | None, lr: torch.Tensor, scale):
    """Store the LR (with the coarse grid's affine) and, when the bias went on the pair, the biased HR."""
    if isinstance(hr, MetaTensor):
        meta = {k: v for k, v in hr.meta.items() if k != "affine"}
        lr = MetaTensor(lr, meta=meta, affine=low_resolution_affine(hr.affine, scale))
        if new_hr is not None:
            new_hr = MetaTensor(new_hr, meta=dict(hr.meta))
    if new_hr is not None:
        d[key] = new_hr
    d[lr_key] = lr


class SimulateLowResolutiond(MapTransform):
    """Make the LR volume once per HR volume (deterministic, so a CacheDataset caches it) under `lr_key`.

    Degrading the whole volume then cropping matches how a real low-resolution scan relates to its
    high-resolution counterpart; k-space truncation in particular is not local, so it must not see patches.
    `method` is one of `LR_METHODS`: a fixed degradation (`kspace` is the reference study's), or "random", which draws
    one degradation per volume from (seed, file name), so validation volumes see a fixed mix of them.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        lr_key: str = "lr",
        scale: int | Sequence[int] = 4,
        method: str = "kspace",
        seed: int = 0,
        noise_max: float = NOISE_MAX,
        bias_max: float = 0.15,
    ) -> None:
        super().__init__(keys)
        if method not in LR_METHODS:
            raise ValueError(f"lr_method must be one of {LR_METHODS}, got {method!r}")
        self.lr_key, self.method, self.seed = lr_key, method, int(seed)
        self.scale = ensure_scale3(scale)
        self.noise_max, self.bias_max = float(noise_max), float(bias_max)

    def _params(self, name: str) -> DegradationParams:
        if self.method != "random":
            return DegradationParams(method=self.method)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        return draw_degradation(rng, "random", self.noise_max, self.bias_max)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            hr = d[key]
            try:
                new_hr, lr = apply_degradation(torch.as_tensor(hr), self.scale, self._params(source_name(hr)))
            except ValueError as err:
                raise ValueError(f"{source_name(hr)}: {err}") from None
            _with_lr(d, key, self.lr_key, hr, new_hr, lr, self.scale)
        return d


# ---------------------------------------------------------------------------------------------------------------
# data consistency


def _check_operator(operator: str) -> None:
    if operator not in OPERATORS:
        raise ValueError(f"consistency operator must be one of {OPERATORS}, got {operator!r}")


def forward_operator(
    sr: torch.Tensor, scale: int | Sequence[int], operator: str = "kspace", fwhm_factor: float = 1.0
) -> torch.Tensor:
    """D(sr): the deterministic degradation `operator` (no apodisation, no noise) of (B, C, X, Y, Z) or
    (C, X, Y, Z); equals degrade(sr, scale, operator, fwhm_factor=fwhm_factor)."""
    _check_operator(operator)
    return _degrade(_as_volume(sr), ensure_scale3(scale), operator, fwhm_factor=fwhm_factor)


def _check_lr(sr: torch.Tensor, lr: torch.Tensor, scale: tuple[int, int, int]) -> None:
    expected = [*sr.shape[:-3], *_check_sizes(sr.shape[-3:], scale)]
    if list(lr.shape) != expected:
        raise ValueError(f"LR shape {list(lr.shape)} does not match SR shape {list(sr.shape)} / scale {list(scale)}")


def consistency_map(
    sr: torch.Tensor, lr: torch.Tensor, scale: int | Sequence[int], operator: str = "kspace", fwhm_factor: float = 1.0
) -> torch.Tensor:
    """|D(sr) - lr| repeated back onto the HR grid (nearest), the shape of `sr`: where the SR disagrees with
    what was measured."""
    scale3 = ensure_scale3(scale)
    x, y = _as_volume(sr), _as_volume(lr).to(sr.device)
    _check_lr(x, y, scale3)
    return _nearest_up((forward_operator(x, scale3, operator, fwhm_factor) - y).abs(), scale3)


@functools.lru_cache(maxsize=32)
def _kspace_lift_index(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one axis: the LR bin feeding each HR bin (n,), and whether the HR bin's frequency f is in the kept
    set C (lo) or -f is (hi). Bins in unshifted FFT order; frequencies are the canonical residues."""
    freq = torch.fft.fftfreq(n, 1.0 / n).round().long()  # n = 4: 0, 1, -2, -1
    lo_f, hi_f = -(m // 2), m - m // 2 - 1
    neg = torch.fft.fftfreq(n, 1.0 / n).round().long()[(-torch.arange(n)) % n]  # frequency of -f as a residue
    lo = (freq >= lo_f) & (freq <= hi_f)
    hi = (neg >= lo_f) & (neg <= hi_f)
    return torch.remainder(freq, m), lo, hi


def _kspace_lift(r: torch.Tensor, hr_size: Sequence[int]) -> torch.Tensor:
    """U r for the k-space operator: a real HR volume whose central k-space is r's, so D(U r) = r exactly.

    The LR spectrum R (Hermitian) is spread onto every HR bin f with f or -f in the kept block C, with value
    R(f mod m); that HR spectrum is Hermitian too (so U r is real) and equals R on C. On even LR sizes this
    puts the unpaired Nyquist bin at both -m/2 and +m/2, which is what makes the real part come out exact.
    """
    spec = torch.fft.fftn(r, dim=_DIMS, norm="forward")
    lifts = [_kspace_lift_index(int(n), int(m)) for n, m in zip(hr_size, r.shape[-3:], strict=True)]
    for dim, (index, _, _) in zip(_DIMS, lifts, strict=True):
        spec = torch.index_select(spec, dim % spec.ndim, index.to(spec.device))
    (_, lx, hx), (_, ly, hy), (_, lz, hz) = lifts

    def box(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return a[:, None, None] & b[None, :, None] & c[None, None, :]

    mask = (box(lx, ly, lz) | box(hx, hy, hz)).to(spec.device)
    return torch.fft.ifftn(spec * mask, dim=_DIMS, norm="forward").real


def _right_inverse(r: torch.Tensor, hr_size: Sequence[int], scale, operator: str, fwhm_factor: float) -> torch.Tensor:
    """U r with D U = I: nearest for area, the k-space lift for kspace, per-axis pseudo-inverses for gaussian."""
    if operator == "area":
        return _nearest_up(r, scale)
    if operator == "kspace":
        return _kspace_lift(r, hr_size)
    for dim, s, n in zip(_DIMS, scale, hr_size, strict=True):
        if s > 1:
            r = _apply_axis(r, _gaussian_pinv(int(n), s, float(fwhm_factor)), dim)
    return r


def project(
    sr: torch.Tensor, lr: torch.Tensor, scale: int | Sequence[int], operator: str = "kspace", fwhm_factor: float = 1.0
) -> torch.Tensor:
    """sr + U(lr - D(sr)) (range-null-space projection): keeps what D does not see of `sr` and takes the rest
    from `lr`, so that D(output) = lr. (B, C, X, Y, Z) or (C, X, Y, Z), the shape and dtype of `sr`; computed in
    float64 so the consistency holds to ~1e-7 of the intensity range after the cast back."""
    scale3 = ensure_scale3(scale)
    _check_operator(operator)
    x = _as_volume(sr)
    y = _as_volume(lr).to(x.device)
    _check_lr(x, y, scale3)
    x64 = x.double()
    residual = y.double() - _degrade(x64, scale3, operator, fwhm_factor=fwhm_factor)
    out = x64 + _right_inverse(residual, x.shape[-3:], scale3, operator, fwhm_factor)
    return out.to(x.dtype)
