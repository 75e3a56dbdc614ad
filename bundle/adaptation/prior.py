"""A warm start for per-scan adaptation, learnt once from a 1 mm template: `<priors_dir>/<profile>_x<scale>.pt`.

A thick scan of 19 slices holds 13 training images; a generator that has already learnt how an acquisition's
slice profile blurs brain anatomy starts its minutes of per-scan training from there instead of from scratch.
The prior learns the same pairs as `run adapting` (`InPlanePairs`: profile and decimation along one in-plane
axis, rotated copies), but from every image of a 1 mm isotropic template along all three of its axes (the
MNI152 2009a T1 shipped in nilearn: a population average, never a scan any table evaluates on), so it has seen
axial, coronal and sagittal anatomy. `priors_training.py` (`scripts/make_adapt_priors.py`, `make priors`) trains
and writes them; `run adapting --warm_start auto` (the default) takes the one of the scan's profile and integer
factor when it exists, and starts from scratch, saying so, when it does not.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from bundle.adaptation.fit import FitResult, FitSettings, fit
from bundle.adaptation.geometry import ScanGeometry
from bundle.adaptation.pairs import InPlanePairs
from bundle.adaptation.slab import as_slab_network
from bundle.core.networks import RRDBNet3D

__all__ = ["AUTO", "prior_path", "find_prior", "template_in_plane_images", "train_prior"]

logger = logging.getLogger(__name__)

AUTO = "auto"  # `warm_start` value: the prior of the scan's profile and factor, when one exists
MIN_FOREGROUND = 0.15  # an image enters the prior's pairs when this fraction of it is above 0.1 (normalised)


def prior_path(priors_dir: str | Path, profile: str, scale: int) -> Path:
    return Path(priors_dir) / f"{profile}_x{scale}.pt"


def find_prior(priors_dir: str | Path | None, geometry: ScanGeometry) -> Path | None:
    """The prior for the scan's slice profile and integer factor, or None (logged) when there is none."""
    if priors_dir is None:
        return None
    path = prior_path(priors_dir, geometry.profile, geometry.scale)
    if path.is_file():
        return path
    logger.info("adaptation: no prior %s for this profile and factor; training from scratch", path)
    return None


def template_in_plane_images(volume: torch.Tensor, side: int) -> torch.Tensor:
    """(X, Y, Z) isotropic volume in [0, 1] -> (N, side, side): the images along each of its three axes within
    the central cube of `side`, those with at least MIN_FOREGROUND of foreground."""
    if min(volume.shape) < side:
        raise ValueError(f"the template {list(volume.shape)} is smaller than the prior's cube of {side}")
    start = [(n - side) // 2 for n in volume.shape]
    cube = volume[start[0] : start[0] + side, start[1] : start[1] + side, start[2] : start[2] + side]
    images = torch.cat([cube, cube.permute(1, 0, 2), cube.permute(2, 0, 1)])
    keep = (images > 0.1).float().mean((1, 2)) >= MIN_FOREGROUND
    return images[keep].contiguous()


def train_prior(
    images: torch.Tensor, profile: str, scale: int, network_kwargs: dict, settings: FitSettings, seconds: float
) -> tuple[dict[str, torch.Tensor], FitResult]:
    """Train RRDBNet3D(scale (1, 1, scale)) on the (N, Q, U) template images' pairs for the profile (FWHM = the
    slice spacing, as `run adapting` assumes by default); returns its state dict (the RRDBNet3D keys) and the
    fit's record. Deterministic for a given `settings.max_iterations` and seed."""
    geometry = ScanGeometry((1.0, 1.0, float(scale)), 2, float(scale), scale, float(scale), profile)
    pairs = InPlanePairs(images, geometry, all_phases=settings.all_phases, rotations=settings.rotations)
    torch.manual_seed(settings.seed)
    network = as_slab_network(RRDBNet3D(scale=(1, 1, scale), **network_kwargs))
    result = fit(network, pairs, tuple(range(images.shape[0])), settings, seconds)
    return {k: v.detach().cpu() for k, v in network.state_dict().items()}, result
