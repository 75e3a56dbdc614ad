"""Random and evaluation degradations HR -> LR: which operator, which filter, how much noise and bias.

A network trained on one simulated degradation does worse than cubic B-spline on scans degraded otherwise.
Training therefore draws the degradation per volume and per epoch (`RandomDegradationd`, after the cache):
k-space truncation as scanners acquire it (FOV-aligned, apodised with a Hamming, Tukey or Fermi filter or not,
partial Fourier, magnitude noise), block average or a Gaussian slice profile, plus a bias field. The evaluation and
the calibration degrade each scan the fixed ways of `EVAL_METHODS` (`evaluation_lr`).

The operators themselves, their geometry (LR voxel i covers HR voxels s*i .. s*i+s-1) and their inverses live in
`bundle.data.operators`; the noise and the bias field in `bundle.data.noise`.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from bundle.core.choices import EVAL_METHODS, LR_METHODS, METHODS, NOISE_MAX, NOISY_LR_SIGMA, OPERATORS
from bundle.core.geometry import ensure_scale3, low_resolution_affine
from bundle.data.noise import bias_field, rician_noise
from bundle.data.operators import APODISATIONS, apply_operator, as_volume, degrade
from bundle.data.transforms import source_name

__all__ = [
    "DegradationParams",
    "RandomDegradationd",
    "SimulateLowResolutiond",
    "PARTIAL_FOURIER_FRACTIONS",
    "apply_degradation",
    "draw_degradation",
    "check_evaluation_methods",
    "evaluation_lr",
    "evaluation_operator",
]

# the fractions of the phase-encode lines a partial-Fourier acquisition keeps (5/8, 6/8, 7/8 are scanners' usual)
PARTIAL_FOURIER_FRACTIONS = (0.625, 0.75, 0.875)


def check_evaluation_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """`methods` as a tuple, after one ValueError naming the config id when it is empty or names an unknown
    degradation (the evaluation and the calibration check it when built, before any model is loaded)."""
    bad_methods = [m for m in methods if m not in EVAL_METHODS]
    if not methods or bad_methods:
        raise ValueError(f"eval_lr_methods: {bad_methods or 'empty'}; choose from {EVAL_METHODS}")
    return tuple(methods)


def evaluation_lr(hr: torch.Tensor, scale: int | Sequence[int], method: str, case: str) -> torch.Tensor:
    """The LR (C, X/sx, Y/sy, Z/sz) an evaluation or calibration scores a volume (C, X, Y, Z) under.

    `method` is one of `EVAL_METHODS`: a fixed degradation of `degrade`; "kspace_hamming": FOV-aligned k-space
    truncation with the Hamming filter scanners apply (no operator of the trust layer models it, so nothing is
    projected with the true operator); or "noisy": the Gaussian slice profile,
    then Rician noise of NOISY_LR_SIGMA of the LR's robust max, drawn from a generator seeded by `case` (the
    volume's name, `bundle.data.datalist.case_name`), so that the evaluation, the calibration and the reader study
    see the same noisy LR of a scan. The noise is the training's (`apply_degradation`), at its largest sigma.
    """
    if method not in EVAL_METHODS:
        raise ValueError(f"evaluation degradation must be one of {EVAL_METHODS}, got {method!r}")
    if method == "kspace_hamming":
        return degrade(hr, scale, "kspace", apodisation="hamming")
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


# ---------------------------------------------------------------------------------------------------------------
# random degradation


@dataclass(frozen=True)
class DegradationParams:
    """One draw of the training degradation; `record()` is what goes into the data dict (plain scalars)."""

    method: str = "kspace"
    apodisation: str = "none"
    tukey_alpha: float = 0.0
    partial_fourier: float = 1.0  # the fraction of k-space lines acquired along partial_fourier_axis
    partial_fourier_axis: int = 0
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
    partial_fourier_probability: float = 0.5,
) -> DegradationParams:
    """Draw one degradation from `rng`: the same generator state gives the same parameters.

    method "random": uniform over `methods`; for kspace an apodisation uniform over `APODISATIONS` (tukey alpha ~
    U(tukey_range)) and, with `partial_fourier_probability`, partial Fourier along a random axis with a fraction of
    `PARTIAL_FOURIER_FRACTIONS`; gaussian fwhm_factor ~ U(fwhm_range). A fixed method keeps degrade()'s defaults
    (no apodisation, full k-space, fwhm_factor 1). Always: noise sigma ~ U(0, noise_max), bias strength ~
    U(0, bias_max). The same number of values is drawn whatever the method, so one choice does not shift the others.
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
    partial = bool(rng.random() < partial_fourier_probability)
    fraction = float(PARTIAL_FOURIER_FRACTIONS[int(rng.integers(len(PARTIAL_FOURIER_FRACTIONS)))])
    pf_axis = int(rng.integers(3))
    if method == "random":
        method = str(methods[pick])
        if method != "kspace":
            apod, partial = "none", False
        if method != "gaussian":
            fwhm = 1.0
    else:
        apod, fwhm, partial = "none", 1.0, False
    return DegradationParams(
        method=method,
        apodisation=apod,
        tukey_alpha=alpha if apod == "tukey" else 0.0,
        partial_fourier=fraction if partial else 1.0,
        partial_fourier_axis=pf_axis if partial else 0,
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
    Rician noise goes on the LR only (the target stays clean), which is never negative after it. A partial-Fourier
    LR is complex until its magnitude is taken, after the noise, as a scanner makes its magnitude image.
    """
    if bias_target not in ("pair", "lr"):
        raise ValueError(f"bias_target must be 'pair' or 'lr', got {bias_target!r}")
    scale3 = ensure_scale3(scale)
    x = as_volume(hr)
    new_hr = None
    if params.bias_strength > 0 and bias_target == "pair":
        x = new_hr = x * bias_field(x.shape[-3:], params.bias_strength, params.bias_coefficients).to(x.device, x.dtype)
    if params.method == "kspace":
        lr = apply_operator(
            x,
            scale3,
            "kspace",
            apodisation=params.apodisation,
            tukey_alpha=params.tukey_alpha,
            partial_fourier=params.partial_fourier,
            partial_fourier_axis=params.partial_fourier_axis,
        )
    else:
        lr = degrade(x, scale3, params.method, fwhm_factor=params.fwhm_factor)
    if params.bias_strength > 0 and bias_target == "lr":
        lr = lr * bias_field(lr.shape[-3:], params.bias_strength, params.bias_coefficients).to(lr.device)
    if params.noise_sigma > 0 or lr.is_complex():
        generator = torch.Generator().manual_seed(params.noise_seed)
        lr = rician_noise(lr, params.noise_sigma, generator).clamp_min(0.0)
    return new_hr, lr.to(x.dtype)


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
    one degradation per volume from (seed, file name), so validation volumes see a fixed mix of them. The file name
    is the path's last part: the draw, and so the validation score and the best model, must not depend on where the
    dataset lies or how its path is spelled (`./data/x`, `/abs/data/x`, a symlink), or a resumed run would compare
    its best metric with scores on other LR.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        lr_key: str = "lr",
        scale: int | Sequence[int] = 4,
        method: str = "random",
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
        rng = np.random.default_rng([self.seed, zlib.crc32(Path(name).name.encode())])
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
