"""Ignite handlers for SR-GAN training: loss-term logging, slice schedule, epoch timing CSV, per-epoch seeding,
TensorBoard scalars whose folder is made at the first write, a progress bar only on a terminal.

Checkpointing and resuming live in `bundle.training.checkpoints`."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import TensorBoardStatsHandler
from monai.utils import set_determinism

from bundle.core.atomic import write_text_atomic
from bundle.core.distributed import is_main_process
from bundle.core.progress import TerminalProgressBar, close_progress_bars  # TerminalProgressBar: train.json's
from bundle.core.timing import Stopwatch
from bundle.training.losses import RandomSlicePerceptualLoss
from bundle.training.trainer import LOSS_TERMS

__all__ = [
    "LossTermLogger",
    "SliceScheduleHandler",
    "EpochTimingHandler",
    "EpochSeedHandler",
    "LearningRateDecay",
    "OneLineErrors",
    "TensorBoardScalars",
    "TerminalProgressBar",
]


class LossTermLogger:
    """Logs every loss term the trainer writes (`LOSS_TERMS`) and the seconds spent in the perceptual term.

    Each iteration it turns `output["terms"]` into floats (one device sync), adds `perceptual_seconds` read
    from the content loss's stopwatch, and leaves the result in `output["log"]` for StatsHandler and
    TensorBoard. At the end of each epoch the epoch means go into `engine.state.metrics` as `train_<term>`.

    Args:
        perceptual_timer: the `Stopwatch` the content loss times its perceptual term with
            (`$@content_loss.perceptual_timer` in the config).
        log_interval: log a line every N iterations (0 = never; epoch means are still stored).
    """

    def __init__(self, perceptual_timer: Stopwatch, log_interval: int = 10, name: str | None = None) -> None:
        self.perceptual_timer = perceptual_timer
        self.log_interval = log_interval
        self.logger = logging.getLogger(name or __name__)
        self._sums: dict[str, float] = {}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        self._sums, self._count = {}, 0

    def iteration_completed(self, engine: Engine) -> None:
        terms = engine.state.output["terms"]  # type: ignore[index]  # the trainer's output dict
        values = torch.stack([terms[k].float() for k in LOSS_TERMS]).tolist()  # one sync for all terms
        log = dict(zip(LOSS_TERMS, values, strict=True))
        log["perceptual_seconds"] = self.perceptual_timer.pop_seconds()
        engine.state.output["log"] = log  # type: ignore[index]
        for k, v in log.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1
        if self.log_interval and engine.state.iteration % self.log_interval == 0 and is_main_process():
            text = " ".join(f"{k}={v:.4g}" for k, v in log.items())
            self.logger.info("epoch %d iteration %d: %s", engine.state.epoch, engine.state.iteration, text)

    def epoch_completed(self, engine: Engine) -> None:
        for k, v in self._sums.items():
            engine.state.metrics[f"train_{k}"] = v / max(self._count, 1)


class SliceScheduleHandler:
    """Changes the perceptual loss's slices per plane at given epochs (e.g. fewer slices early on).

    Args:
        perceptual_loss: the `RandomSlicePerceptualLoss` of the content loss (`@perceptual_loss`).
        schedule: {first_epoch: slices_per_plane}, e.g. {1: 4, 50: 10}: from each key's epoch on, the loss uses
            that many slices per plane ("all" = every slice). Empty: no change. It cannot turn the term on or off.
    """

    def __init__(self, perceptual_loss: RandomSlicePerceptualLoss, schedule: Mapping[int, int | str] | None = None):
        self.perceptual_loss = perceptual_loss
        self.schedule = {int(k): v for k, v in (schedule or {}).items()}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if self.schedule:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        due = [k for k in self.schedule if k <= engine.state.epoch]
        if not due:
            return
        k = self.schedule[max(due)]
        if k != self.perceptual_loss.slices_per_plane:
            self.perceptual_loss.set_slices_per_plane(k)
            self.logger.info("epoch %d: perceptual loss now uses %s slices per plane", engine.state.epoch, k)


class LearningRateDecay:
    """Cosine decay of the optimisers' learning rates over the last epochs of a run, set from the epoch alone.

    Epoch e (1-based) of `start_epoch` < e <= `end_epoch` trains at final + (base - final) (1 + cos(pi t)) / 2,
    t = (e - start_epoch) / (end_epoch - start_epoch), final = `final_fraction` * base; epochs up to `start_epoch`
    keep the base rate. Why: a constant rate leaves the weights wandering at the size of its steps; decaying it at
    the end settles them (measured on tuning volumes: docs/results.md, version 0.8.8). Stateless (a function of
    `engine.state.epoch`, applied at each epoch's start, after `ResumeFromCheckpoint` restored the optimisers), so a
    killed and resumed run follows the same schedule with nothing more in its checkpoint; MONAI's LrScheduleHandler
    wraps a torch scheduler whose own state would have to be saved and restored.

    Args:
        optimizers: {name: optimiser} (`@g_optimizer`, `@d_optimizer`).
        base_rates: {name: the learning rate it trains at before the decay}; every name of `optimizers`.
        start_epoch: the last epoch at the base rate; None: no decay (the handler does nothing).
        end_epoch: the epoch that trains at the final rate (the run's `max_epochs`).
        final_fraction: the final rate as a fraction of the base rate, in (0, 1].
    """

    def __init__(
        self,
        optimizers: Mapping[str, torch.optim.Optimizer],
        base_rates: Mapping[str, float],
        start_epoch: int | None,
        end_epoch: int,
        final_fraction: float = 0.05,
    ) -> None:
        missing = [name for name in optimizers if name not in base_rates]
        if missing:
            raise ValueError(f"lr decay: no base rate for {missing}")
        if not 0.0 < float(final_fraction) <= 1.0:
            raise ValueError(f"lr_decay_final_fraction must be in (0, 1], got {final_fraction}")
        if start_epoch is not None and not 0 <= int(start_epoch) < int(end_epoch):
            raise ValueError(f"lr_decay_start_epoch must be in [0, max_epochs {end_epoch}), got {start_epoch}")
        self.optimizers, self.base_rates = dict(optimizers), {k: float(v) for k, v in base_rates.items()}
        self.start_epoch = None if start_epoch is None else int(start_epoch)
        self.end_epoch, self.final_fraction = int(end_epoch), float(final_fraction)
        self.logger = logging.getLogger(__name__)

    def factor(self, epoch: int) -> float:
        """The learning rate of `epoch` as a fraction of the base rate."""
        if self.start_epoch is None or epoch <= self.start_epoch:
            return 1.0
        t = min(1.0, (epoch - self.start_epoch) / (self.end_epoch - self.start_epoch))
        return self.final_fraction + (1.0 - self.final_fraction) * 0.5 * (1.0 + math.cos(math.pi * t))

    def attach(self, engine: Engine) -> None:
        if self.start_epoch is not None:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        factor = self.factor(engine.state.epoch)
        for name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = self.base_rates[name] * factor
        if self.start_epoch is not None and engine.state.epoch == self.start_epoch + 1:
            self.logger.info(
                "learning rates decay from epoch %d to %.3g of their base at epoch %d",
                engine.state.epoch,
                self.final_fraction,
                self.end_epoch,
            )


class EpochTimingHandler:
    """Appends seconds per epoch, patches per second and the epoch's mean loss terms to a CSV (rank 0 only).

    The clock stops at the epoch's last training iteration, so validation and checkpointing (which run at
    EPOCH_COMPLETED) do not count as training time. Appending keeps a resumed run's history in one file; rows for
    this epoch or later ones (left by a run killed between its row and its checkpoint, whose epoch this run
    repeats) are replaced, so every epoch appears once. The file is rewritten atomically.

    Args:
        csv_path: the CSV to append to.
        validator: the validation evaluator (`@validate#evaluator`). Its key metric (e.g. `val_psnr`) goes into a
            column of that name on the epochs it validated and stays empty on the others; read from the
            evaluator's own state, the one value the best-model saver also compares. Attach this handler after
            the `ValidationHandler`, so validation has run when the row is written.
    """

    FIELDS = ("epoch", "seconds", "iterations", "patches", "patches_per_second") + tuple(
        f"train_{t}" for t in LOSS_TERMS
    )

    def __init__(self, csv_path: str | os.PathLike, validator: Engine | None = None) -> None:
        self.csv_path = Path(csv_path)
        self.validator = validator
        self._start = self._last = 0.0
        self._patches = 0
        self._iterations = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        # after the other EPOCH_COMPLETED handlers have filled state.metrics
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        self._start, self._patches, self._iterations = time.perf_counter(), 0, 0

    def iteration_completed(self, engine: Engine) -> None:
        self._patches += int(engine.state.output["label"].shape[0])  # type: ignore[index]
        self._iterations += 1
        self._last = time.perf_counter()

    def epoch_completed(self, engine: Engine) -> None:
        if not is_main_process():
            return
        seconds = self._last - self._start
        row: dict[str, int | float | str] = {
            "epoch": engine.state.epoch,
            "seconds": round(seconds, 3),
            "iterations": self._iterations,
            "patches": self._patches,
            "patches_per_second": round(self._patches / max(seconds, 1e-9), 3),
        }
        for t in LOSS_TERMS:
            row[f"train_{t}"] = engine.state.metrics.get(f"train_{t}", "")
        fields = self.FIELDS
        key = getattr(getattr(self.validator, "state", None), "key_metric_name", None)
        if key:
            fields = (*fields, key)
            validated = self.validator.state.epoch == engine.state.epoch  # type: ignore[union-attr]
            value = self.validator.state.metrics.get(key) if validated else None  # type: ignore[union-attr]
            row[key] = "" if value is None else round(float(value), 6)
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        rows = [r for r in self._read_rows() if int(r["epoch"]) < int(row["epoch"])]
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([*rows, row])
        write_text_atomic(self.csv_path, buffer.getvalue())

    def _read_rows(self) -> list[dict]:
        """The rows already in the CSV (of earlier runs), minus any without a whole-number epoch."""
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline="") as f:
            return [r for r in csv.DictReader(f) if str(r.get("epoch", "")).strip().isdigit()]


class EpochSeedHandler:
    """Make every epoch's randomness a function of (seed, epoch) alone, so a resumed run repeats it.

    At each epoch start it reseeds the global RNGs, the random transforms (`transform.set_random_state`)
    and every loss with a `reseed` method (the perceptual loss's slice sampling). With a seeded epoch
    sampler (`DistributedSampler`, whose `set_epoch` MONAI calls), an interrupted and resumed run draws the
    same patches and slices as an uninterrupted one. Exact for `num_workers=0`; with workers, each worker's
    transforms are seeded from the epoch's torch seed by MONAI's `worker_init_fn`.
    """

    def __init__(self, seed: int = 0, transform=None, losses: list | None = None) -> None:
        self.seed, self.transform, self.losses = int(seed), transform, list(losses or [])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        epoch_seed = self.seed + 1000 * engine.state.epoch + 100_003 * rank  # ranks draw different patches
        set_determinism(seed=epoch_seed, use_deterministic_algorithms=None)
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=epoch_seed)
        for loss in self.losses:
            loss.reseed(epoch_seed)


class OneLineErrors:
    """First EXCEPTION_RAISED handler of an engine: a one-line error (a SystemExit such as `DiskFullError` while
    model.pt is written during validation) goes to the user as is, after closing progress bars so none redraws
    after it. MONAI's StatsHandler would log it with a full traceback; ignite runs only the first handler that
    raises, so attach this one before it. Other exceptions are logged with their traceback, as StatsHandler does.
    """

    def __init__(self, name: str | None = None) -> None:
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Engine, e: BaseException) -> None:
        if isinstance(e, SystemExit):
            close_progress_bars()
            raise e
        self.logger.exception(f"Exception: {e}")
        raise e


class _WriterAtFirstWrite:
    """A `SummaryWriter` made at its first write: until then no folder and no event file exist, so a run that
    stops before writing (a training refused by the checkpoint folder's lock, a bad dataset) leaves nothing."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = str(log_dir)
        self._writer: Any = None

    def _made(self) -> Any:
        if self._writer is None:
            from monai.handlers.tensorboard_handlers import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def __getattr__(self, name: str) -> Any:  # add_scalar and the writer's other methods
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._made(), name)


class TensorBoardScalars(TensorBoardStatsHandler):
    """MONAI's `TensorBoardStatsHandler` whose `log_dir` is made at the first value written, not when the config
    is parsed: MONAI's own makes the folder and an event file at construction, before any handler is attached,
    so a training that stops before its first iteration left an empty `tensorboard/`. Same arguments."""

    def __init__(self, log_dir: str = "./runs", **kwargs: Any) -> None:
        self._at_first_write = _WriterAtFirstWrite(log_dir)
        super().__init__(summary_writer=self._at_first_write, log_dir=log_dir, **kwargs)
        self.internal_writer = True  # close() closes the writer it made

    @property
    def made(self) -> bool:
        """Whether anything was written (the folder exists)."""
        return self._at_first_write._writer is not None
