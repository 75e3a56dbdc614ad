"""Test-time augmentation: invertible flips and axis swaps of the LR input, undone on the HR grid; their voxel-wise
spread is the raw uncertainty.

MONAI's `TestTimeAugmentation` assumes the output grid equals the input grid, so the inversion is done here.
Tensors are (B, C, X, Y, Z); the HR grid is `scale` (a per-axis int triple) times the LR grid.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.inferers import Inferer

from bundle.core.geometry import ensure_scale3
from bundle.trust.record import CalibrationRecord

AXIS_NAMES = "XYZ"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Augmentation:
    """Permute the spatial axes by `perm`, then flip the (post-permutation) spatial axes in `flips`.

    Both are exact on either grid: LR voxel i along an axis of scale s covers HR voxels s*i .. s*i+s-1, so a flip
    of the LR axis is the same flip of the HR axis, and a permutation among equal-scale axes maps the HR grid the
    same way. `invert` undoes `apply` on the network's HR output.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        parts = []
        if self.perm != (0, 1, 2):
            parts.append("perm" + "".join(AXIS_NAMES[p] for p in self.perm))
        if self.flips:
            parts.append("flip" + "".join(AXIS_NAMES[a] for a in self.flips))
        return "+".join(parts) or "identity"

    def apply(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) LR -> augmented LR (spatial axes permuted, then flipped)."""
        x = lr.permute(0, 1, *(2 + p for p in self.perm))
        return torch.flip(x, dims=[2 + a for a in self.flips]) if self.flips else x

    def invert(self, hr: torch.Tensor) -> torch.Tensor:
        """Network output for the augmented LR, (B, C, sX', sY', sZ') -> the original HR orientation."""
        x = torch.flip(hr, dims=[2 + a for a in self.flips]) if self.flips else hr
        inverse = [0, 0, 0]
        for i, p in enumerate(self.perm):
            inverse[p] = i
        return x.permute(0, 1, *(2 + p for p in inverse))


def _flip_subsets() -> list[tuple[int, ...]]:
    """(), (X,), (Y,), (Z,), (X,Y), (X,Z), (Y,Z), (X,Y,Z): by size, then axis order."""
    return [c for k in range(4) for c in itertools.combinations(range(3), k)]


def tta_augmentations(scale: int | Sequence[int], n: int) -> list[Augmentation]:
    """The first `n` invertible augmentations for an SR model of per-axis `scale`, in a fixed order.

    Order: the identity; the seven flips of axis subsets; then, for each allowed non-identity permutation (in
    itertools order), its combination with each of the eight flip subsets. A permutation may only exchange axes
    of equal scale, otherwise the HR output of the permuted input is not the permuted HR grid: (4, 4, 4) allows
    all 6 permutations (48 augmentations), (1, 1, 4) only swapping X and Y (16), (2, 3, 4) none (8).
    """
    scale3 = ensure_scale3(scale)
    perms = [p for p in itertools.permutations(range(3)) if all(scale3[i] == scale3[q] for i, q in enumerate(p))]
    available = [
        Augmentation((p[0], p[1], p[2]), flips) for p in perms for flips in _flip_subsets()
    ]  # identity perm first
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of test-time augmentations must be a positive int, got {n!r}")
    if n > len(available):
        raise ValueError(
            f"{n} test-time augmentations requested but scale {list(scale3)} allows only {len(available)} "
            "(flips of axis subsets, and permutations of equal-scale axes)"
        )
    return available[:n]


@dataclass
class TTAResult:
    """`single`: the identity pass; `mean`, `std`: voxel-wise over the passes (population std). All
    (B, C, sX, sY, sZ) float32."""

    single: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


@torch.no_grad()
def tta_predict(
    lr: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor], scale: int | Sequence[int], passes: int
) -> TTAResult:
    """Run `predict` (LR (B, C, X, Y, Z) -> HR (B, C, sX, sY, sZ), e.g. inferer + network) on `passes`
    augmentations of `lr`, undo each on the HR grid, and return the identity pass, mean and std.

    Memory: Welford's running mean and sum of squared deviations in float64, plus the identity pass; the passes
    are never stacked. Identical passes give a std of exactly 0.
    """
    if lr.dim() != 5:
        raise ValueError(f"expected an LR tensor (B, C, X, Y, Z), got shape {tuple(lr.shape)}")
    scale3 = ensure_scale3(scale)
    expected = (*lr.shape[:2], *(n * s for n, s in zip(lr.shape[2:], scale3, strict=True)))
    single: torch.Tensor | None = None
    mean = m2 = torch.empty(0)  # set by the identity pass
    for k, aug in enumerate(tta_augmentations(scale3, passes), start=1):
        out = aug.invert(predict(aug.apply(lr)))
        if tuple(out.shape) != expected:
            raise ValueError(
                f"predict returned {tuple(out.shape)} for augmentation {aug.name}; expected {expected} "
                f"(LR {tuple(lr.shape)} times scale {list(scale3)})"
            )
        x = out.to(torch.float64, copy=True)  # updated in place below; never alias the caller's tensor
        if single is None:
            single, mean, m2 = out.float().clone(), x.clone(), torch.zeros_like(x)
            continue
        delta = x - mean
        mean.add_(delta, alpha=1.0 / k)
        m2.addcmul_(delta, x.sub_(mean))  # delta * (x - new mean)
        del out, x, delta
    assert single is not None  # passes >= 1 (tta_augmentations)
    std = (m2 / passes).sqrt_()
    return TTAResult(single=single, mean=mean.float(), std=std.float())


class TTAInferer(Inferer):
    """An inferer for the bundle's evaluators: `inferer` (e.g. make_inferer's) under `passes` test-time augmentations.

    Returns the SR output chosen by `output` ("single": the identity pass, "tta_mean": the TTA mean, as recorded in
    `CalibrationRecord.sr_output`); when `with_std`, the TTA std follows as extra channels, (B, 2C, sX, sY, sZ)
    with SR in [:, :C] and std in [:, C:], for postprocessing to split into two keys. With passes = 1, "single"
    and with_std False it equals the wrapped inferer.
    """

    def __init__(
        self, inferer: Inferer, scale: int | Sequence[int], passes: int, output: str = "single", with_std: bool = True
    ) -> None:
        super().__init__()
        if output not in ("single", "tta_mean"):
            raise ValueError(f"TTA output must be 'single' or 'tta_mean', got {output!r}")
        tta_augmentations(scale, passes)  # fail at construction on a bad number of passes
        self.inferer, self.scale, self.passes = inferer, ensure_scale3(scale), passes
        self.output, self.with_std = output, with_std

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        res = tta_predict(inputs, lambda x: self.inferer(x, network, *args, **kwargs), self.scale, self.passes)
        sr = res.single if self.output == "single" else res.mean
        return torch.cat([sr, res.std], dim=1) if self.with_std else sr


def written_sr(passes: int, calibration: CalibrationRecord | None = None) -> str:
    """Which SR inference writes: "tta_mean" (the voxel-wise mean of the passes) with passes > 0 and a calibration
    whose `sr_output` is "tta_mean", else "single" (the one network pass, also the identity pass of the TTA)."""
    if passes and calibration is not None and calibration.sr_output == "tta_mean":
        return "tta_mean"
    return "single"


def make_sr_inferer(
    inferer: Inferer, scale: int | Sequence[int], passes: int, calibration: CalibrationRecord | None = None
) -> Inferer:
    """The inference evaluator's inferer: `inferer` itself when passes is 0, else a `TTAInferer` returning
    [SR | std], whose SR is the output the calibration chose ("single" without a calibration). Either way the
    windows and passes of each volume are logged with an ETA (`bundle.core.progress.ProgressInferer`). When the SR
    written is the TTA mean, not the single pass, one log line says so (and the trust summary's "sr_output")."""
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 0:
        raise ValueError(f"uncertainty must be 0 (off) or a number of test-time augmentation passes, got {passes!r}")
    from bundle.core.progress import ProgressInferer  # windows and passes, with an ETA, inside each volume

    if passes == 0:
        return ProgressInferer(inferer, 1)
    output = written_sr(passes, calibration)
    if output == "tta_mean":
        logger.info(
            "uncertainty: the SR written is the mean of %d test-time augmentation passes, not the single network "
            "pass (the calibration's sr_output is tta_mean; --uncertainty 0 writes the single pass); <name>_sr.json "
            "says which (sr_output)",
            passes,
        )
    return TTAInferer(ProgressInferer(inferer, passes), scale, passes, output)
