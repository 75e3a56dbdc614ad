"""The per-scan workflow's time budget: measure what the predictions will cost, give training the rest, refuse a
budget that cannot fit, and show progress with an ETA while predicting.

`--max_minutes` is a promise: the whole run (load, estimate, pairs, training, held-out checks, predictions,
writing) ends within it. The predictions' cost is measured at the start on the scan's own slabs, at the batch
size and number of test-time passes the prediction uses (the best of two timed calls after a warm-up call), and
multiplied by what the prediction will run: both slab orientations of the scan, each turn's padded scan (plus
its bicubic rotations, timed on the scan's own slices) and the held-out checks (with their cubic B-spline and their
PSNR and SSIM, timed on the same slabs). Training gets the rest. The turned
predictions are optional (+0.06 dB measured, docs/results.md): they are reserved only while training keeps
`TURNS_TRAINING_FRACTION` of the budget, come last, and each is skipped, and said so, when the time left cannot
hold it (`PredictionCost.turn_fits`). When even without them less than `MIN_TRAINING_FRACTION` of the budget would
be left to train, the run stops at once, in one line naming the smallest budget that fits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bundle.adaptation.geometry import ScanGeometry, to_slabs
from bundle.adaptation.pairs import rotate_images
from bundle.adaptation.predict import predict_slabs, rotation_padding
from bundle.core.bspline import BSplineUpsample3D
from bundle.core.errors import ConfigError
from bundle.core.metrics import psnr, ssim_3d
from bundle.core.progress import format_seconds
from bundle.core.timing import call_seconds

__all__ = [
    "MIN_TRAINING_FRACTION",
    "SAFETY",
    "PredictionCost",
    "PredictionProgress",
    "measure_prediction",
    "training_seconds",
]

logger = logging.getLogger(__name__)

MIN_TRAINING_FRACTION = 0.2  # below this share of the budget for training, the run is refused at the start
TURNS_TRAINING_FRACTION = 0.5  # turned predictions are planned only while training keeps this share
WRITE_MARGIN_S = 5.0  # consistency step, projection and writing after the predictions (small volumes: seconds)
# measured costs are scaled by this when planned: the whole prediction (slabs cut and put back, the fields averaged)
# took 1.05-1.3 times the best timed batch on the 96 mm cube
SAFETY = 1.3


@dataclass(frozen=True)
class PredictionCost:
    """Seconds measured and extrapolated: per slab pixel (all passes), the unturned scan (both orientations),
    one turn (padded scan, both orientations, its rotations), the held-out checks."""

    per_pixel: float
    unturned: float
    per_turn: float
    held_out: float
    turns: int

    @property
    def essential(self) -> float:
        """Seconds to reserve for the held-out checks, the unturned prediction and the writing."""
        return SAFETY * (self.unturned + self.held_out) + WRITE_MARGIN_S

    @property
    def total(self) -> float:
        """`essential` and every turn."""
        return self.essential + SAFETY * self.turns * self.per_turn

    def turn_fits(self, seconds_left: float, unturned_took: float | None = None) -> bool:
        """True if one more turned prediction (and the writing after it) fits in `seconds_left`; `unturned_took`
        (the unturned prediction's real seconds) rescales the measured cost of a turn (the machine's load may have
        changed since the start)."""
        if unturned_took is not None and self.unturned > 0:  # measured against the real prediction: no safety
            return self.per_turn * unturned_took / self.unturned + WRITE_MARGIN_S <= seconds_left
        return SAFETY * self.per_turn + WRITE_MARGIN_S <= seconds_left

    def as_dict(self) -> dict[str, float | int]:
        return {
            "unturned_s": round(self.unturned, 1),
            "per_turn_s": round(self.per_turn, 1),
            "held_out_s": round(self.held_out, 1),
            "turns": self.turns,
            "essential_s": round(self.essential, 1),
            "reserved_with_turns_s": round(self.total, 1),
        }


def measure_prediction(
    network: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    geometry: ScanGeometry,
    passes: int,
    turns: int,
    held_out_pixels: int,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
) -> PredictionCost:
    """Time a batch of the (X, Y, Z) scan's own slabs with every pass, and its slices' rotation, and extrapolate
    (module docstring). `held_out_pixels`: LR pixels of the held-out checks, predicted with every pass."""
    slabs = to_slabs(volume, geometry.slice_axis, geometry.in_plane_axes[0])[:batch_size]
    predict_slabs(network, slabs, passes, batch_size, device)  # the first call of a shape allocates and plans
    per_pixel = (
        min(call_seconds(lambda: predict_slabs(network, slabs, passes, batch_size, device), 2, device)) / slabs.numel()
    )
    # the held-out checks also upsample by cubic B-spline and score SR and B-spline (PSNR, SSIM) against the HR
    sr = predict_slabs(network, slabs, 1, batch_size, device)[0]
    bspline = BSplineUpsample3D((1, 1, geometry.scale))

    def score() -> None:
        base = bspline(slabs.float())
        for out in (sr, base):
            psnr(out, sr)
            ssim_3d(out, sr, win_size=7)

    scoring = min(call_seconds(score, 2, device)) / slabs.numel()
    unturned = per_pixel * 2 * volume.numel()  # slabs across each in-plane axis: every pixel twice
    per_turn = 0.0
    if turns:
        a, b = (volume.shape[i] for i in geometry.in_plane_axes)
        pad_a, pad_b = rotation_padding((a, b))
        slices = volume.shape[geometry.slice_axis]
        padded = torch.zeros(slices, a + 2 * pad_a, b + 2 * pad_b)
        rotation = min(call_seconds(lambda: rotate_images(padded, 45.0), 2))
        # the turned scan's slabs in both orientations; one rotation of the thick slices, and back for the mean
        # and the variance of each orientation at `scale` times the slices
        per_turn = per_pixel * 2 * padded.numel() + rotation * (1 + 4 * geometry.scale)
    return PredictionCost(per_pixel, unturned, per_turn, (per_pixel + scoring) * held_out_pixels, turns)


def training_seconds(budget_s: float, elapsed_s: float, cost: PredictionCost, source: str = "scan") -> float:
    """Seconds left to train after `elapsed_s` and the predictions' reserve (module docstring); a ConfigError in
    one line, naming the smallest `--max_minutes` that fits, when less than MIN_TRAINING_FRACTION of the budget
    would be left without the turns."""
    left = budget_s - elapsed_s - cost.total
    reserved = cost.total
    if cost.turns and left < TURNS_TRAINING_FRACTION * budget_s:
        left, reserved = budget_s - elapsed_s - cost.essential, cost.essential
        logger.warning(
            "adaptation: the turned predictions (%s each) do not fit beside training in --max_minutes %g; they run "
            "only if time is left",
            format_seconds(cost.per_turn),
            budget_s / 60,
        )
    if left < MIN_TRAINING_FRACTION * budget_s:
        # smallest budget B with B - elapsed - reserve >= fraction * B, rounded up to half a minute
        needed = (elapsed_s + cost.essential) / (1.0 - MIN_TRAINING_FRACTION)
        minutes = math.ceil(needed / 30.0) / 2.0
        raise ConfigError(
            f"{source}: --max_minutes {budget_s / 60:g} is too short: predicting the scan needs about "
            f"{format_seconds(cost.essential)} (measured on its own slabs) and {format_seconds(elapsed_s)} went on "
            f"loading and preparing, which leaves too little to train; use --max_minutes {minutes:g} or more (or "
            "fewer --uncertainty passes)"
        )
    logger.info(
        "adaptation: %s for training, %s reserved for the predictions (measured: %s unturned, %s per turn)",
        format_seconds(left),
        format_seconds(reserved),
        format_seconds(cost.unturned),
        format_seconds(cost.per_turn),
    )
    return left


class PredictionProgress:
    """Log lines while predicting, every `interval` seconds: slabs done of all, elapsed, ETA."""

    def __init__(self, total_slabs: int, desc: str = "predicting", interval: float = 5.0) -> None:
        self.total, self.desc, self.interval = max(int(total_slabs), 1), desc, float(interval)
        self.done = 0
        self.started = self.last = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add_total(self, slabs: int) -> None:
        self.total += int(slabs)

    def __call__(self, slabs: int) -> None:
        self.done += int(slabs)
        now = time.monotonic()
        if now - self.last < self.interval and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.started
        left = elapsed / self.done * max(self.total - self.done, 0) if self.done else math.nan
        eta = "done" if self.done >= self.total else f"about {format_seconds(left)} left"
        logger.info("%s: slab %d/%d, %s elapsed, %s", self.desc, self.done, self.total, format_seconds(elapsed), eta)
