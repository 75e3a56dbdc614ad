"""Memory needed to super-resolve one volume, estimated before it runs; one line when it will not fit.

A 500x500x400 input at x4 has a 25.6 GB float32 output before anything else is counted, and without a check the
run died after minutes in a 95-line allocation traceback. `estimate_inference_memory` counts, in float32 bytes:

- output-sized buffers: the SR volume, MONAI's sliding-window sum and weight maps (sliding window only), the
  consistency map and its projection, the intensity-restored copies and the writer's array: 5 volumes of the
  output's size for a whole-volume pass, 7 with the sliding window, 4 more with test-time augmentation
  (`--uncertainty N`: the [SR | std] output, its running sums);
- the generator's activations for one forward pass (no gradients at inference): the last upsampling stage holds
  about 3 x `features` channels on the HR grid of the window, the dense blocks `2 x features + 4 x growth`
  channels on its LR grid. The window is the whole volume without the sliding window, else `roi_size` (never
  larger than the volume) times `sw_batch_size`; channels run as a batch.

`CheckMemoryd` runs it on every input as part of the upfront input check (before any output is written) and
refuses a volume whose estimate exceeds the memory available on the device, with the advice that helps most
(`--sliding_window True`, a smaller `--roi_size`, `--uncertainty 0`, a smaller `sw_batch_size`); above half of
it, it warns. `inference_oom_error` turns an allocation failure that still happens into one line.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.core.geometry import ensure_scale3

__all__ = [
    "estimate_inference_memory",
    "MemorySettings",
    "available_memory",
    "memory_advice",
    "CheckMemoryd",
    "is_out_of_memory",
    "inference_oom_error",
]

logger = logging.getLogger(__name__)
FLOAT = 4  # bytes per float32 value
GB = 1e9


def estimate_inference_memory(
    spatial_shape: Sequence[int],
    channels: int = 1,
    scale: int | Sequence[int] = 4,
    sliding_window: bool = True,
    roi_size: Sequence[int] = (64, 64, 40),
    sw_batch_size: int = 1,
    passes: int = 0,
    features: int = 64,
    growth: int = 32,
) -> dict[str, float]:
    """Bytes needed to super-resolve one (channels, *spatial_shape) LR volume; see the module docstring.

    Returns {"output": bytes of one SR volume, "buffers": output-sized buffers, "network": activations of one
    forward pass, "total": buffers + network + the input}.
    """
    factors = ensure_scale3(scale)
    lr_voxels = math.prod(int(n) for n in spatial_shape)
    upscale = math.prod(factors)
    output = FLOAT * channels * lr_voxels * upscale
    copies = (7 if sliding_window else 5) + (4 if passes else 0)
    if sliding_window:
        window = math.prod(min(int(r), int(n)) for r, n in zip(roi_size, spatial_shape, strict=True))
        window = min(window * max(int(sw_batch_size), 1), lr_voxels) * channels
    else:
        window = lr_voxels * channels
    network = FLOAT * window * (3 * features * upscale + 2 * features + 4 * growth)
    buffers = copies * output
    return {
        "output": float(output),
        "buffers": float(buffers),
        "network": float(network),
        "total": float(buffers + network + 2 * FLOAT * channels * lr_voxels),
    }


@dataclass(frozen=True)
class MemorySettings:
    """How a run will super-resolve, as far as its memory goes: `estimate_inference_memory`'s arguments after the
    volume's shape, normalised once (a bool, ints, a tuple roi) and fixed for the run."""

    scale: int | tuple[int, ...] = 4
    sliding_window: bool = True
    roi_size: tuple[int, ...] = (64, 64, 40)
    sw_batch_size: int = 1
    passes: int = 0
    features: int = 64
    growth: int = 32

    @classmethod
    def of(
        cls,
        scale: int | Sequence[int] = 4,
        sliding_window: bool = True,
        roi_size: Sequence[int] = (64, 64, 40),
        sw_batch_size: int = 1,
        passes: int | None = 0,
        features: int = 64,
        growth: int = 32,
    ) -> MemorySettings:
        """From config values (`passes` None = 0, any sequence for `roi_size` and `scale`)."""
        return cls(
            scale=tuple(int(s) for s in scale) if isinstance(scale, Sequence) else int(scale),
            sliding_window=bool(sliding_window),
            roi_size=tuple(int(r) for r in roi_size),
            sw_batch_size=int(sw_batch_size),
            passes=int(passes or 0),
            features=int(features),
            growth=int(growth),
        )

    def estimate(self, spatial_shape: Sequence[int], channels: int = 1) -> dict[str, float]:
        """`estimate_inference_memory` of one (channels, *spatial_shape) LR volume with these settings."""
        return estimate_inference_memory(spatial_shape, channels=channels, **asdict(self))

    def advice(self, estimate: Mapping[str, float]) -> str:
        """`memory_advice` for these settings."""
        return memory_advice(estimate, self.sliding_window, self.passes, self.sw_batch_size)


def available_memory(device: torch.device | str | None = None) -> float:
    """Bytes free for this run on `device`: the GPU's free memory, or the host's available memory."""
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def memory_advice(estimate: Mapping[str, float], sliding_window: bool, passes: int, sw_batch_size: int) -> str:
    """What lowers the estimate most, most effective first."""
    advice = []
    if not sliding_window and estimate["network"] > estimate["buffers"] / 4:
        advice.append("--sliding_window True")
    elif sliding_window and estimate["network"] > estimate["buffers"] / 4:
        advice.append("a smaller --roi_size")
        if sw_batch_size > 1:
            advice.append("sw_batch_size 1")
    if passes:
        advice.append("--uncertainty 0")
    crop = f"crop the volume (its SR output alone is {estimate['output'] / GB:.3g} GB)"
    return f"{', '.join(advice)} or {crop}" if advice else crop


def _source(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else "<in memory>"


class CheckMemoryd(MapTransform):
    """Refuse, in one line naming the file, a volume whose estimated memory exceeds what the device has free.

    Args:
        keys: the LR image, channel first (C, X, Y, Z).
        scale, sliding_window, roi_size, sw_batch_size, passes, features, growth: as the run will use them
            (`@scale`, `@sliding_window`, `@roi_size`, 1, `@uncertainty`, `@features`, `@growth`).
        device: where inference runs (`@device`).
        available: bytes to compare with (None: measured on `device` at each call; tests pass a number).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        scale: int | Sequence[int] = 4,
        sliding_window: bool = True,
        roi_size: Sequence[int] = (64, 64, 40),
        sw_batch_size: int = 1,
        passes: int = 0,
        features: int = 64,
        growth: int = 32,
        device: torch.device | str | None = None,
        available: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.settings = MemorySettings.of(scale, sliding_window, roi_size, sw_batch_size, passes, features, growth)
        self.device, self.available = device, available

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            estimate = self.settings.estimate(img.shape[1:], channels=int(img.shape[0]))
            free = self.available if self.available is not None else available_memory(self.device)
            need = estimate["total"]
            if need > free:
                advice = self.settings.advice(estimate)
                raise ValueError(
                    f"{_source(img)}: volume {list(img.shape[1:])} needs about {need / GB:.3g} GB to super-resolve "
                    f"(network {estimate['network'] / GB:.3g} GB, output buffers {estimate['buffers'] / GB:.3g} GB) "
                    f"but {free / GB:.3g} GB is free; try {advice}"
                )
            if need > free / 2:
                logger.warning(
                    "%s: needs about %.3g GB of the %.3g GB free; it may run short", _source(img), need / GB, free / GB
                )
        return d


def is_out_of_memory(err: BaseException) -> bool:
    """True for an allocation failure: MemoryError, torch's OutOfMemoryError, or the CPU allocator's error."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("not enough memory" in text or "out of memory" in text)


def inference_oom_error(err: BaseException, inputs: Any, **settings: Any) -> str:
    """One line for an allocation failure while super-resolving `inputs` (B, C, X, Y, Z): file, volume, need."""
    shape = list(inputs.shape[2:])
    estimate = estimate_inference_memory(shape, channels=int(inputs.shape[1]), **settings)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"{_source(inputs)}: out of memory super-resolving volume {shape} (about {estimate['total'] / GB:.3g} GB "
        f"needed; {first[:120]}); try --sliding_window True, a smaller --roi_size or --uncertainty 0"
    )
