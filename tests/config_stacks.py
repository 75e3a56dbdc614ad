"""The config files each command stacks (`--config_file "[...]"`), for the tests that check configs as a whole."""

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
