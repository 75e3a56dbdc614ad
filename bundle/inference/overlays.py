"""Config overlays and the network they build: an overlay folded into a base config, the network a raw config
builds (on the meta device for shapes only), whether a state dict fits it, and the one finder of the overlay that
fits a checkpoint (inference's loading error and the export's both name it)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import MERGE_KEY, merge_kv

from bundle.core.errors import ConfigError

__all__ = ["BASE_CONFIGS", "build_network", "fitting_overlays", "merge_config", "shape_mismatch"]

BASE_CONFIGS = ("inference.json", "train.json", "metadata.json")


def merge_config(base: Path, overlays: Sequence[Path]) -> tuple[dict, list[str]]:
    """The raw config of `base` with each overlay applied in order, through monai.bundle.ConfigParser.

    Returns (config, skipped): `skipped` lists "overlay.json:id" for overlay ids that `base` does not have
    (neither the id nor, for a nested id such as "train#sampler", its parent), and any `bundle_root` or
    `dataset_dir` (where a bundle and its data live is the user's, not the training run's).
    """
    parser = ConfigParser()
    parser.read_config(str(base))
    skipped = []
    for overlay in overlays:
        for key, value in ConfigParser.load_config_file(str(overlay)).items():
            target = key[len(MERGE_KEY) :] if key.startswith(MERGE_KEY) else key
            parent, _ = ReferenceResolver.split_id(target, last=True)
            known = target in parser or (parent != "" and parent in parser)
            if target in ("bundle_root", "dataset_dir") or not known:  # where the bundle and its data live
                skipped.append(f"{overlay.name}:{key}")
                continue
            merge_kv(parser, key, copy.deepcopy(value))
    parser.resolve_macro_and_relative_ids()
    config = parser.get()
    config.pop(ConfigParser.meta_key, None)
    return config, skipped


def build_network(config: dict, bundle_root: Path, device: str = "cpu") -> torch.nn.Module:
    """Instantiate `network_def` of a raw config with random weights.

    device="meta" gives the parameter names and shapes without allocating or initialising them (a tenth of
    the time for the full generator), which is all the checkpoint checks need.
    """
    parser = ConfigParser(config=copy.deepcopy(config))
    parser["bundle_root"] = str(bundle_root)
    if "network_def" not in parser:
        raise ConfigError("network_def: not in the config")
    with torch.device(device):
        return parser.get_parsed_content("network_def")


def shape_mismatch(state: dict[str, torch.Tensor], network: torch.nn.Module) -> str | None:
    """None when `state` has exactly the network's keys and shapes, else a short summary of the difference."""
    want = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    other = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if not (missing or extra or other):
        return None
    parts = [f"{len(missing)} key(s) missing", f"{len(extra)} unexpected", f"{len(other)} with another shape"]
    if other:
        parts.append(f"e.g. {other[0]}: checkpoint {got[other[0]]}, network {want[other[0]]}")
    elif missing:
        parts.append(f"e.g. missing {missing[0]}")
    else:
        parts.append(f"e.g. unexpected {extra[0]}")
    return ", ".join(parts)


def fitting_overlays(state: dict[str, torch.Tensor], configs_dir: Path) -> list[Path] | None:
    """How `configs_dir`'s inference.json builds `state`'s network: [] when it does alone, else the overlays (single
    files of `configs_dir` other than the base configs) under each of which it does; None when none does.

    Networks are built on the meta device (names and shapes only), so this is cheap enough for an error message.
    """
    base = configs_dir / "inference.json"

    def fits(overlays: list[Path]) -> bool:
        try:
            network = build_network(merge_config(base, overlays)[0], configs_dir.parent, device="meta")
        except Exception:  # an overlay that does not build is simply not the one
            return False
        return shape_mismatch(state, network) is None

    if not base.is_file():
        return None
    if fits([]):
        return []
    found = [p for p in sorted(configs_dir.glob("*.json")) if p.name not in BASE_CONFIGS and fits([p])]
    return found or None
