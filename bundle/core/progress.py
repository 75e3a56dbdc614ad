"""Progress that a user can read: inside a volume, with an ETA, and no bar redrawn after an error line.

Inside a volume: sliding-window windows x test-time-augmentation passes, and volume steps.

A 128x96x24 EPI with 8 uncertainty passes runs minutes on a CPU; a progress bar per volume moves only when the
volume is done, so a user cannot tell a slow run from a hung one. `ProgressInferer` wraps any inferer and counts
the network calls it makes (one per sliding-window batch of windows), with the expected total for the volume
(windows per pass x passes x channels) computed from the window geometry; it logs at most every `interval`
seconds "window 37/96 (pass 3/8), 0:41 elapsed, about 1:05 left". `VolumeProgress` does the same per volume for
the evaluation and calibration loops. Both log through `logging` (the bundle's logging.conf shows INFO).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.inferers import Inferer, SlidingWindowInferer

__all__ = [
    "ProgressInferer",
    "TerminalProgressBar",
    "VolumeProgress",
    "windows_per_pass",
    "format_seconds",
    "close_progress_bars",
]

logger = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    """'1:05', '12:00', '1:02:03' (h:mm:ss above an hour)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _sliding(inferer: Any) -> SlidingWindowInferer | None:
    """The SlidingWindowInferer inside `inferer` (itself, or wrapped as `.inferer` by ChannelwiseInferer)."""
    for _ in range(4):
        if isinstance(inferer, SlidingWindowInferer):
            return inferer
        inferer = getattr(inferer, "inferer", None)
    return None


def windows_per_pass(spatial: Sequence[int], roi_size: Sequence[int] | None, overlap: float, sw_batch: int = 1) -> int:
    """Network calls for one pass over a volume of `spatial` LR voxels: MONAI's window grid (interval
    roi * (1 - overlap), windows clamped to the volume), batched `sw_batch` at a time; 1 without a window."""
    if roi_size is None:
        return 1
    count = 1
    for n, r in zip(spatial, roi_size, strict=True):
        r = min(int(r), int(n)) if int(r) > 0 else int(n)
        interval = max(int(r * (1 - overlap)), 1)
        count *= 1 if n <= r else math.ceil((n - r) / interval) + 1
    return math.ceil(count / max(sw_batch, 1))


class ProgressInferer(Inferer):
    """`inferer` with progress and an ETA inside each volume, over `passes` calls per volume (TTA passes).

    Shapes are the wrapped inferer's: (B, C, X, Y, Z) LR in, (B, C, sX, sY, sZ) out. A new volume starts when the
    previous one's expected calls are used up (the TTA inferer calls this `passes` times per volume).
    """

    def __init__(self, inferer: Inferer, passes: int = 1, desc: str = "super-resolving", interval: float = 5.0):
        super().__init__()
        self.inferer, self.passes, self.desc, self.interval = inferer, max(int(passes), 1), desc, float(interval)
        self.calls_done, self.calls_total, self.pass_index = 0, 0, 0
        self.started = self.last_log = 0.0

    def _expected_calls(self, inputs: torch.Tensor) -> int:
        sw = _sliding(self.inferer)
        spatial = tuple(inputs.shape[2:])
        if sw is None:
            per_pass = 1
        else:
            roi = getattr(sw, "roi_size", None)
            roi = [roi] * len(spatial) if isinstance(roi, int) else roi
            per_pass = windows_per_pass(spatial, roi, float(sw.overlap), int(sw.sw_batch_size))  # type: ignore[arg-type]
        channels = inputs.shape[1] if type(self.inferer).__name__ == "ChannelwiseInferer" else 1
        return per_pass * channels * inputs.shape[0]

    def _tick(self) -> None:
        self.calls_done += 1
        now = time.monotonic()
        done, total = min(self.calls_done, self.calls_total), self.calls_total
        if now - self.last_log < self.interval and done < total:
            return
        self.last_log = now
        elapsed = now - self.started
        left = elapsed / done * (total - done) if done else math.nan
        passes = f" (pass {self.pass_index}/{self.passes})" if self.passes > 1 else ""
        eta = "done" if done >= total else f"about {format_seconds(left)} left"
        logger.info("%s: window %d/%d%s, %s elapsed, %s", self.desc, done, total, passes, format_seconds(elapsed), eta)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        per_pass = self._expected_calls(inputs)
        if self.pass_index == 0 or self.pass_index >= self.passes:  # a new volume
            self.calls_done, self.calls_total, self.pass_index = 0, per_pass * self.passes, 0
            self.started = self.last_log = time.monotonic()
        self.pass_index += 1
        self.calls_done = (self.pass_index - 1) * per_pass  # re-synchronise: the estimate may be off by a window

        def counting(*a: Any, **k: Any) -> Any:
            out = network(*a, **k)
            self._tick()
            return out

        return self.inferer(inputs, counting, *args, **kwargs)


class VolumeProgress:
    """One log line per finished step of a loop over volumes, with elapsed time and an ETA."""

    def __init__(self, desc: str, total: int, unit: str = "volume") -> None:
        self.desc, self.total, self.unit, self.done = desc, int(total), unit, 0
        self.started = time.monotonic()
        logger.info("%s: %d %s(s)", desc, self.total, unit)

    def step(self, what: str = "") -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        logger.info(
            "%s: %s %d/%d%s, %s elapsed, about %s left",
            self.desc,
            self.unit,
            self.done,
            self.total,
            f" ({what})" if what else "",
            format_seconds(elapsed),
            format_seconds(left),
        )


def close_progress_bars() -> bool:
    """Close every open tqdm bar (ignite's ProgressBar), so none redraws after an error line; True if any was."""
    try:
        from tqdm import tqdm
    except ImportError:
        return False
    bars = list(getattr(tqdm, "_instances", []))
    for bar in bars:
        bar.close()
    return bool(bars)


class TerminalProgressBar:
    """Ignite's `ProgressBar`, attached only when stderr is a terminal.

    tqdm redraws its line with carriage returns; in a log file, a pipe or a scheduler's output each redraw stays,
    so every epoch left one line holding several copies of the bar (the first without its "Epoch [n/N]" label).
    Off a terminal nothing is drawn: the trainer's own log line per epoch (`Epoch[n] Complete. Time taken: ...`,
    with the epoch's metrics just before it) says the same. Keyword arguments go to `ProgressBar` (`persist`).
    """

    def __init__(self, stream: Any = None, **kwargs: Any) -> None:
        self.stream = stream
        self.kwargs = kwargs
        self.bar: Any = None

    def attach(self, engine: Engine) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        isatty = getattr(stream, "isatty", None)
        if not (callable(isatty) and isatty()):
            return
        from ignite.handlers import ProgressBar

        self.bar = ProgressBar(file=stream, **self.kwargs)
        self.bar.attach(engine)
