"""Inference helpers: channel-wise inferer, upfront validation of the inputs, and SR of one volume."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer

from bundle.data import DatasetError, inference_datalist

__all__ = ["ChannelwiseInferer", "ClampedSlidingWindowInferer", "make_inferer", "validated_datalist"]

logger = logging.getLogger(__name__)


class ChannelwiseInferer(Inferer):
    """Run a single-channel network on every channel of the input (channels become batch entries).

    Lets one trained model super-resolve each modality of a multi-channel scan; a no-op for one channel.
    """

    def __init__(self, inferer: Inferer | None = None) -> None:
        super().__init__()
        self.inferer = inferer or SimpleInferer()

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        b, c = inputs.shape[:2]
        flat = inputs.reshape(b * c, 1, *inputs.shape[2:])
        out = self.inferer(flat, network, *args, **kwargs)
        return out.reshape(b, c, *out.shape[2:])


class ClampedSlidingWindowInferer(SlidingWindowInferer):
    """Sliding window whose window never exceeds the volume.

    MONAI pads a volume smaller than `roi_size` with zeros up to the window, and the network then sees a
    dark frame that changes its output near every border. Clamping the window per axis avoids that: a
    small volume runs as one exact whole-volume pass.
    """

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        requested = self.roi_size
        self.roi_size = tuple(min(int(r), int(n)) for r, n in zip(requested, inputs.shape[2:], strict=True))
        try:
            return super().__call__(inputs, network, *args, **kwargs)
        finally:
            self.roi_size = requested


def make_inferer(sliding_window: bool, roi_size, overlap: float = 0.25, sw_batch_size: int = 1) -> Inferer:
    """Whole-volume or sliding-window inference on the LR grid (roi_size in LR voxels), channel-wise.

    With a 4x output, overlap * roi * 4 must be whole numbers and MONAI's buffered path must stay off.
    """
    if not sliding_window:
        return ChannelwiseInferer(SimpleInferer())
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return ChannelwiseInferer(
        ClampedSlidingWindowInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian")
    )


def validated_datalist(input_dir: str, transform: Callable[[dict], Any]) -> list[dict]:
    """List the inputs and run `transform` (loading and checks) on each before any output is written.

    A bad file stops the run with one message naming it, and no output of any case is left half-made.
    """
    items = inference_datalist(input_dir)
    for item in items:
        try:
            transform(dict(item))
        except Exception as err:  # report the root cause, not MONAI's transform-chain wrapper
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            text = str(cause)
            if not text.startswith(item["image"]):
                first_line = text.splitlines()[0] if text else type(cause).__name__
                text = f"{item['image']}: cannot be read as an image ({first_line})"
            raise DatasetError(text) from None
    logger.info("%d input volume(s) checked", len(items))
    return items
