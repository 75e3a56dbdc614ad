"""Inference helpers: channel-wise inferer, upfront validation of the inputs, and SR of one volume."""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type

from bundle.core.distributed import unwrap
from bundle.core.errors import CheckpointError, DatasetError, describe_load_error, root_cause
from bundle.core.progress import close_progress_bars
from bundle.data.datalist import inference_datalist
from bundle.inference.memory import inference_oom_error, is_out_of_memory
from bundle.inference.overlays import fitting_overlays
from bundle.inference.spacing import SPACING_KEY, spacing_record, spacing_summary

__all__ = [
    "ChannelwiseInferer",
    "ClampedSlidingWindowInferer",
    "DEFAULT_MARGIN",
    "make_inferer",
    "validated_datalist",
    "generator_size",
    "read_generator_state",
    "load_generator",
]

SIZE_IDS = ("num_blocks", "features", "growth")

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
        try:
            out = self.inferer(flat, network, *args, **kwargs)
        except (MemoryError, RuntimeError) as err:  # an allocation failure is one line naming the volume
            if not is_out_of_memory(err):
                raise
            sliding = isinstance(self.inferer, SlidingWindowInferer)
            window = self.inferer.roi_size if isinstance(self.inferer, SlidingWindowInferer) else inputs.shape[2:]
            roi = (window,) * 3 if isinstance(window, int) else tuple(window)
            scale = getattr(network, "scale", 4)
            close_progress_bars()
            raise DatasetError(
                inference_oom_error(err, inputs, scale=scale, sliding_window=sliding, roi_size=roi)
            ) from None
        return out.reshape(b, c, *out.shape[2:])


DEFAULT_MARGIN = 4  # LR voxels dropped at a window border shared with another window (see margin_profile)


class ClampedSlidingWindowInferer(SlidingWindowInferer):
    """Sliding window on the LR grid whose windows never exceed the volume and whose inner borders are dropped.

    Within its receptive field of a window's border a convolutional network's output differs from what it gives
    on the whole volume: it sees zero padding there, not the neighbouring tissue. MONAI's Gaussian blending keeps
    part of that border output, and on a 4x output it upsamples its weights by nearest neighbour: a seam at window
    boundaries and a 4-voxel block texture in the overlaps. Here instead:

    - windows overlap by at least `overlap` x roi and at least 2 x `margin` LR voxels on every axis (`overlap` is
      raised to that; the window grid is then MONAI's, so the same windows and the same count as progress expects);
      the margin is at most a quarter of the window on each axis (so the overlap never exceeds one half);
    - each window's output within `margin` LR voxels of a border it shares with another window is dropped, and the
      rest of each overlap is cross-faded linearly, with weights at the output's own voxel centres that sum to one
      (`axis_weights`); borders on the volume's edge are kept, as a whole-volume pass has them;
    - the window is clamped per axis to the volume: MONAI pads a smaller volume with zeros up to the window, and
      the network then sees a dark frame; a small volume runs as one exact whole-volume pass.

    With `margin` at least the network's effective receptive field the windowed SR equals the whole-volume SR
    to within the network's response at that distance (tests/inference/test_generator.py measures it).
    """

    def __init__(
        self, roi_size: Sequence[int], sw_batch_size: int = 1, overlap: float = 0.25, margin: int = DEFAULT_MARGIN
    ) -> None:
        roi = [int(r) for r in roi_size]
        if int(margin) != margin or margin < 0:
            raise ValueError(f"margin must be a whole number of LR voxels >= 0, got {margin}")
        self.margins = [min(int(margin), r // 4) for r in roi]  # at most a quarter of the window: overlap <= 0.5
        overlap = max(float(overlap), *(2 * m / r for m, r in zip(self.margins, roi, strict=True)))
        super().__init__(roi_size=roi, sw_batch_size=sw_batch_size, overlap=overlap, mode="constant")
        self.margin, self.window = int(margin), roi

    def window_starts(self, n: int, r: int) -> list[int]:
        """MONAI's window starts on an axis of n voxels for windows of r <= n voxels (`dense_patch_slices`)."""
        if r >= n:
            return [0]
        interval = max(int(r * (1 - float(self.overlap))), 1)  # type: ignore[arg-type]
        return sorted({min(i * interval, n - r) for i in range(math.ceil((n - r) / interval) + 1)})

    @staticmethod
    def axis_weights(starts: Sequence[int], r: int, scale: int, margin: int) -> torch.Tensor:
        """(windows, r * scale) float64 weights of each window's output voxels along one axis: zero within `margin`
        LR voxels of a shared border, a linear cross-fade over the rest of each overlap; they sum to one."""
        centres = [
            (b + a + r) / 2 for a, b in zip(starts, starts[1:], strict=False)
        ]  # middle of window i's overlap with i + 1
        halves = [max(a + r - b - 2 * margin, 0) / 2 for a, b in zip(starts, starts[1:], strict=False)]
        gaps = [math.inf, *(c2 - c1 for c1, c2 in zip(centres, centres[1:], strict=False)), math.inf]
        halves = [min(h, gaps[i] / 2, gaps[i + 1] / 2) for i, h in enumerate(halves)]  # fades never overlap

        def after(u: torch.Tensor, i: int) -> torch.Tensor:  # 0 before cross-fade i, 1 after it
            if i < 0:
                return torch.ones_like(u)
            if i >= len(centres):
                return torch.zeros_like(u)
            if halves[i] == 0:
                return (u >= centres[i]).to(u.dtype)
            return ((u - centres[i]) / (2 * halves[i]) + 0.5).clamp(0, 1)

        rows = []
        for i, p in enumerate(starts):
            u = p + (torch.arange(r * scale, dtype=torch.float64) + 0.5) / scale  # output voxel centres, LR units
            rows.append(after(u, i - 1) - after(u, i))
        return torch.stack(rows)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any):
        spatial = [int(n) for n in inputs.shape[2:]]
        roi = [min(r, n) for r, n in zip(self.window, spatial, strict=True)]
        starts = [self.window_starts(n, r) for n, r in zip(spatial, roi, strict=True)]
        windows = [(b, w) for b in range(inputs.shape[0]) for w in itertools.product(*starts)]
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        out: torch.Tensor | None = None
        weights: list[torch.Tensor] = []
        for first in range(0, len(windows), int(self.sw_batch_size)):
            group = windows[first : first + int(self.sw_batch_size)]
            crops = [
                plain[(slice(b, b + 1), slice(None), *(slice(p, p + r) for p, r in zip(w, roi, strict=True)))]
                for b, w in group
            ]
            pred = network(torch.cat(crops), *args, **kwargs)
            if out is None:
                scale = [int(s) // r for s, r in zip(pred.shape[2:], roi, strict=True)]
                if [s * r for s, r in zip(scale, roi, strict=True)] != list(pred.shape[2:]):
                    raise ValueError(
                        f"network output {list(pred.shape[2:])} is not a whole multiple of its input {roi}"
                    )
                shape = (inputs.shape[0], pred.shape[1], *(n * s for n, s in zip(spatial, scale, strict=True)))
                out = torch.zeros(shape, dtype=torch.float32, device=pred.device)
                weights = [
                    self.axis_weights(st, r, s, m).float().to(pred.device)
                    for st, r, s, m in zip(starts, roi, scale, self.margins, strict=True)
                ]
            for (b, w), y in zip(group, pred, strict=True):
                weight = torch.ones((), device=pred.device)
                for axis, (st, p) in enumerate(zip(starts, w, strict=True)):
                    view = [1] * len(roi)
                    view[axis] = -1
                    weight = weight * weights[axis][st.index(p)].reshape(view)
                region = [slice(p * s, (p + r) * s) for p, r, s in zip(w, roi, scale, strict=True)]
                index: tuple[int | slice, ...] = (b, slice(None), *region)
                out[index] += y.float() * weight
        assert out is not None
        return convert_to_dst_type(out, inputs, device=out.device)[0]


def make_inferer(
    sliding_window: bool, roi_size, overlap: float = 0.25, sw_batch_size: int = 1, margin: int = DEFAULT_MARGIN
) -> Inferer:
    """Whole-volume or sliding-window inference on the LR grid (roi_size in LR voxels), channel-wise.

    Sliding windows overlap by at least `overlap` x roi and 2 x `margin` LR voxels; each window's output within
    `margin` of a border shared with another window is dropped (`ClampedSlidingWindowInferer`).
    """
    if not sliding_window:
        return ChannelwiseInferer(SimpleInferer())
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return ChannelwiseInferer(
        ClampedSlidingWindowInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, margin=margin)
    )


GZIP_MAX_RATIO = 1100  # deflate cannot compress more than about 1032:1


def check_header_size(path: str | os.PathLike) -> None:
    """Refuse, in one DatasetError line naming the file, a NIfTI (.nii, .nii.gz) whose header claims more voxel
    data than the file can hold (exactly for .nii, by deflate's largest ratio for .nii.gz), before a reader tries
    to allocate it. Other files, and headers a reader cannot parse, are left to the reader."""
    name = str(path).lower()
    if not name.endswith((".nii", ".nii.gz")) or not os.path.isfile(path):
        return
    try:
        header: Any = nib.load(str(path)).header  # a Nifti1Header or Nifti2Header
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header["vox_offset"])
    except Exception:  # noqa: BLE001 - not a readable NIfTI header: the reader's own error names it
        return
    needed = math.prod(shape) * dtype.itemsize
    size = os.path.getsize(path)
    room = size * GZIP_MAX_RATIO if name.endswith(".gz") else size - offset
    if needed > room:
        raise DatasetError(
            f"{path}: the header claims {' x '.join(map(str, shape))} voxels ({needed / 1e9:.3g} GB of "
            f"{dtype}), more than the file's {size} bytes can hold; the file is damaged or truncated"
        )


def validated_datalist(
    items: list[dict] | str,
    transform: Callable[[dict], Any],
    output_format: str = "nifti",
    scale: int | Sequence[int] = 4,
) -> list[dict]:
    """Run `transform` (loading and checks) on every input before any output is written; returns the items.

    items: the planned inputs (`OutputPlan.items`), or an input file/folder to list. A bad file stops the run
    with one message naming it, and no output of any case is left half-made. DICOM output needs every input to
    be a DICOM series (checked here, before anything is inferred). An input whose x`scale` output would still be
    thick-slice is warned about in one line (`bundle.inference.spacing`); each item keeps its spacing record for
    the trust summary.
    """
    from bundle.inference.dicom_out import check_output_format  # pydicom only when inference runs

    items = inference_datalist(items) if isinstance(items, (str, os.PathLike)) else list(items)
    check_output_format(items, output_format)
    for item in items:
        source = item["image"][0] if isinstance(item["image"], list) else item["image"]
        check_header_size(source)
        try:
            loaded = transform(dict(item))
        except Exception as err:  # report the root cause, not MONAI's transform-chain wrapper
            cause = root_cause(err)
            text = str(cause)
            if not text.startswith(str(source)):
                first_line = text.splitlines()[0] if text else type(cause).__name__
                text = f"{source}: cannot be read as an image ({first_line})"
            raise DatasetError(text) from None
        image = loaded.get("image") if isinstance(loaded, dict) else None
        if image is not None:
            item[SPACING_KEY] = spacing_record(image, str(source), scale)
            if warning := spacing_summary(item).get("spacing_warning"):
                logger.warning("%s", warning)
    logger.info("%d input volume(s) checked", len(items))
    return items


def generator_size(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The RRDBNet3D size ids a generator state dict was built with: num_blocks, features, growth."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"trunk\.(\d+)\.", k))}
    size = {"num_blocks": len(blocks)}
    if "conv_first.weight" in state:
        size["features"] = int(state["conv_first.weight"].shape[0])
    if "trunk.0.blocks.0.convs.0.weight" in state:  # the first dense convolution adds `growth` channels
        size["growth"] = int(state["trunk.0.blocks.0.convs.0.weight"].shape[0])
    return size


def read_generator_state(ckpt_path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The generator's weights from `ckpt_path` (weights_only=True): a plain state dict, or one nested under
    "model" (model.pt of older runs) or "network" (a training checkpoint).

    Every failure is one `CheckpointError` line naming the file: missing, empty, unreadable, no tensors, or
    non-finite weights (a diverged model must never be run or shipped).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: generator checkpoint not found (train first, or pass --ckpt_path)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: generator checkpoint is empty (0 bytes); pass another --ckpt_path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled objects: one line, no traceback
        raise CheckpointError(f"{path}: not a readable generator checkpoint ({describe_load_error(err)})") from None
    for key in ("model", "network"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: no generator weights (tensors) at the top level, nor under 'model' or 'network'"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {bad[0]} (and {len(bad) - 1} more tensors)")
    return state


def load_generator(network: torch.nn.Module, ckpt_path: str | os.PathLike, map_location: Any = "cpu") -> None:
    """Load generator weights (see `read_generator_state`) into `network`; every failure is one `CheckpointError`
    line naming the file, a network of another size too (both sizes, and the overlay of `configs/` that fits)."""
    path = Path(ckpt_path)
    state = read_generator_state(path, map_location)
    inner = unwrap(network)
    expected = inner.state_dict()
    if set(state) != set(expected) or any(tuple(state[k].shape) != tuple(expected[k].shape) for k in expected):
        have, want = generator_size(state), generator_size(expected)
        fits = fitting_overlays(state, Path(__file__).resolve().parents[2] / "configs")
        hint = (
            f"; it fits {' or '.join(f'configs/{p.name}' for p in fits)}: add that overlay to --config_file"
            if fits
            else "; it fits configs/inference.json alone: leave the overlays out of --config_file" if fits == [] else ""
        )
        text = ", ".join(f"{k}={v}" for k, v in have.items()) or "unknown"
        raise CheckpointError(
            f"{path}: a generator with {text} does not fit this config's network "
            f"({', '.join(f'{k}={v}' for k, v in want.items())}){hint}, or set {'/'.join(SIZE_IDS)}"
        )
    inner.load_state_dict(state)
