"""Slice-wise (2.5D) LPIPS for volumes, with honest handling of the ImageNet backbone weights.

The `lpips` wheel ships its calibrated linear layers but fetches the AlexNet backbone from torchvision.
LPIPS from a random backbone is not LPIPS, so when the backbone weights are absent the metric is reported
as missing, with the reason, instead of a number.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

__all__ = ["VolumeLPIPS", "alexnet_weights_path", "load_lpips"]

logger = logging.getLogger(__name__)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


def alexnet_weights_path(weights: str | None = "auto") -> Path:
    """Where the ImageNet AlexNet weights should be: a given file, or torchvision's file in the torch hub cache."""
    if weights in (None, "auto"):
        return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return Path(weights)


def load_lpips(weights: str | None = "auto"):
    """An `lpips.LPIPS(net="alex")` with ImageNet backbone weights, or (None, reason) when they are missing."""
    import lpips
    import torchvision

    path = alexnet_weights_path(weights)
    if not path.is_file():
        return None, f"AlexNet ImageNet weights not found at {path}"
    model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # calibrated linear layers from the wheel
    alex = torchvision.models.alexnet(weights=None)
    alex.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    for block in model.net.children():
        for name, module in block.named_children():
            module.load_state_dict(alex.features[int(name)].state_dict())
    logger.info("LPIPS: AlexNet backbone from %s", path)
    return model.eval(), None


class VolumeLPIPS:
    """Mean LPIPS over slices of the three planes of (1, 1, X, Y, Z) volumes in [0, 1].

    `max_slices_per_plane` evenly spaced slices per plane (None = all), fed as 2x-1 in chunks.
    """

    def __init__(self, model: torch.nn.Module, max_slices_per_plane: int | None = None, chunk: int = 32) -> None:
        self.model = model
        self.max_slices_per_plane = max_slices_per_plane
        self.chunk = chunk

    def _planes(self, vol: torch.Tensor):
        for axis in (2, 3, 4):
            n = vol.shape[axis]
            k = n if self.max_slices_per_plane is None else min(n, self.max_slices_per_plane)
            idx = torch.linspace(0, n - 1, k).round().long().to(vol.device)
            slices = vol.index_select(axis, idx).movedim(axis, 0)  # (K, 1, 1, H, W)
            yield slices.reshape(k, 1, slices.shape[-2], slices.shape[-1])

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> float:
        if pred.shape != target.shape or pred.dim() != 5 or pred.shape[:2] != (1, 1):
            raise ValueError(f"expected two (1, 1, X, Y, Z) volumes, got {tuple(pred.shape)}, {tuple(target.shape)}")
        device = next(self.model.parameters()).device
        total, count = 0.0, 0
        for p, t in zip(self._planes(pred.float()), self._planes(target.float()), strict=True):
            for start in range(0, p.shape[0], self.chunk):
                a = (p[start : start + self.chunk].clamp(0, 1) * 2 - 1).expand(-1, 3, -1, -1).to(device)
                b = (t[start : start + self.chunk].clamp(0, 1) * 2 - 1).expand(-1, 3, -1, -1).to(device)
                total += float(self.model(a, b).sum())
                count += a.shape[0]
        return total / max(count, 1)
