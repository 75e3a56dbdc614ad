"""Train the generator on a scan's own in-plane pairs, within a wall-clock budget, with a progress bar.

The losses are the project's (`bundle.training.losses`): MSE + w_ssim (1 - SSIM) + w_p RandomSlicePerceptualLoss
(L1 in place of the MSE with `pixel_loss="l1"`; on the tuning template it changed nothing, docs/results.md).
On a slab (B, 1, 1, q, u) the SSIM is the 2-D SSIM of the (q, u) plane and the perceptual term reads the one
plane that makes sense, the slab itself ("yz": every patch, with its restored axis and its sharp context). No
adversarial term: with one scan and minutes of CPU it would invent texture the scan does not hold. The learning
rate follows a cosine from `learning_rate` to 0 over the budget (time or iterations, whichever ends first).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from bundle.adaptation.pairs import InPlanePairs
from bundle.core.errors import TrainingDiverged
from bundle.core.metrics import SeparableSSIMLoss

__all__ = ["FitSettings", "FitResult", "fit"]

logger = logging.getLogger(__name__)

PIXEL_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}  # `FitSettings.pixel_loss`: the pixel term, mean over voxels


@dataclass(frozen=True)
class FitSettings:
    """What one adaptation trains with (the config ids `adapt_*` of configs/adapt.json)."""

    batch_size: int = 8
    patch_size: int = 48
    learning_rate: float = 2e-3
    warmup: int = 50
    ssim_weight: float = 1.0
    ssim_window: int = 7
    perceptual_weight: float = 0.0
    max_iterations: int = 0  # 0: only the time budget ends training
    # exponential moving average of the weights, used after training (0: off). Off by default: on the tuning scan
    # (the MNI152 template made thick, never an evaluation scan) it cost 0.7-1.0 dB after ~300 iterations
    ema_decay: float = 0.0
    seed: int = 0
    # train on every decimation phase of the in-plane images (`InPlanePairs`), not only the first
    all_phases: bool = False
    # in-plane rotated copies of each training image (`InPlanePairs`, 0: none); configs/adapt.json sets 2: on the
    # tuning template made thick (box x5, 9 minutes) 2 copies gained 0.27 dB, 4 copies 0.31 dB (docs/results.md)
    rotations: int = 0
    # the pixel term of the loss: "mse" (the project's content loss) or "l1"
    pixel_loss: str = "mse"

    def __post_init__(self) -> None:
        if self.pixel_loss not in PIXEL_LOSSES:
            raise ValueError(f"adapt_fit#pixel_loss must be one of {sorted(PIXEL_LOSSES)}, got {self.pixel_loss!r}")
        if self.rotations < 0:
            raise ValueError(f"adapt_fit#rotations must be >= 0, got {self.rotations}")


@dataclass
class FitResult:
    iterations: int
    seconds: float
    patches: int
    losses: list[float] = field(default_factory=list)  # mean loss per 10 iterations (the last: of the rest)
    last_weights: dict[str, torch.Tensor] | None = None  # the raw weights when the averaged ones were loaded

    @property
    def patches_per_second(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else 0.0


def _cosine(step_fraction: float, base: float, iteration: int, warmup: int) -> float:
    """Linear warm-up over `warmup` iterations (the first Adam steps move every weight by about the learning
    rate, which pulls a B-spline-initialised generator far below its start), then a cosine to 0."""
    ramp = min(1.0, (iteration + 1) / warmup) if warmup > 0 else 1.0
    return ramp * 0.5 * base * (1.0 + math.cos(math.pi * min(1.0, max(0.0, step_fraction))))


def fit(
    network: nn.Module,
    pairs: InPlanePairs,
    indices: tuple[int, ...],
    settings: FitSettings,
    seconds: float,
    device: torch.device | str = "cpu",
    perceptual: nn.Module | None = None,
) -> FitResult:
    """Train `network` (LR slab -> HR slab) on patches of the images `indices` for `seconds` of wall clock
    (or `settings.max_iterations`); returns what was done. Raises TrainingDiverged on a non-finite loss."""
    network.train()
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    ema = None
    if settings.ema_decay:
        ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True)
    ssim_loss = SeparableSSIMLoss(win_size=settings.ssim_window)
    pixel_loss = PIXEL_LOSSES[settings.pixel_loss]
    generator = torch.Generator().manual_seed(settings.seed)
    limit_iterations = settings.max_iterations or None
    start = time.monotonic()
    result = FitResult(iterations=0, seconds=0.0, patches=0)
    window: list[float] = []
    total = limit_iterations if limit_iterations else max(1, int(seconds))
    bar = tqdm(total=total, desc="adapting", unit="it" if limit_iterations else "s", leave=False, mininterval=2.0)
    try:
        while True:
            elapsed = time.monotonic() - start
            done_fraction = result.iterations / limit_iterations if limit_iterations else 0.0
            done_fraction = max(done_fraction, elapsed / seconds if seconds > 0 else 1.0)
            if done_fraction >= 1.0:
                break
            for group in optimiser.param_groups:
                group["lr"] = _cosine(done_fraction, settings.learning_rate, result.iterations, settings.warmup)
            lr, hr = pairs.sample(indices, settings.batch_size, settings.patch_size, generator)
            lr, hr = lr.to(device), hr.to(device)
            fake = network(lr)
            loss = pixel_loss(fake, hr)
            if settings.ssim_weight:
                loss = loss + settings.ssim_weight * ssim_loss(fake, hr)
            if settings.perceptual_weight and perceptual is not None:
                loss = loss + settings.perceptual_weight * perceptual(fake, hr)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"adaptation diverged at iteration {result.iterations} (loss {loss.item()}); "
                    "lower adapt_learning_rate"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if ema is not None:
                ema.update_parameters(network)
            result.iterations += 1
            result.patches += settings.batch_size
            value = float(loss.detach())
            window.append(value)
            if len(window) == 10:
                result.losses.append(sum(window) / len(window))
                window.clear()
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            position = result.iterations if limit_iterations else min(total, int(time.monotonic() - start))
            bar.update(position - bar.n)
    finally:
        bar.close()
        network.eval()
    if window:  # the last, partial window (all of a run shorter than one): the final loss is always a real one
        result.losses.append(sum(window) / len(window))
    if ema is not None and result.iterations:
        # the average of the last ~1 / (1 - decay) steps: less of the last batches' noise than the last weights
        result.last_weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
        network.load_state_dict(ema.module.state_dict())
    result.seconds = time.monotonic() - start
    logger.info(
        "adaptation: %d iterations, %d patch pairs in %.0f s (%.1f pairs/s), final loss %.4f",
        result.iterations,
        result.patches,
        result.seconds,
        result.patches_per_second,
        result.losses[-1] if result.losses else float("nan"),
    )
    return result
