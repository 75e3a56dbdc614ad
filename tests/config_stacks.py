"""The config files each command stacks (`--config_file "[...]"`) and a walk over their components, for the tests that
check configs as a whole."""

from conftest import ROOT

CONFIGS = ROOT / "configs"
# demo/tiny/thick_slice/release*.json only change values, so they add no component to check
STACKS = {
    "train": ["train.json"],
    "inference": ["inference.json"],
    "evaluate": ["train.json", "evaluate.json"],
    "calibrate": ["train.json", "calibrate.json"],
    "adapting": ["inference.json", "adapt.json"],
}


def components(node, where: str = ""):
    """Every (config path, component dict) with a `_target_` inside `node`."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield where, node
        for key, value in node.items():
            yield from components(value, f"{where}#{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from components(value, f"{where}#{i}")
