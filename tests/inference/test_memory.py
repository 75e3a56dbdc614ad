"""A volume too large for the device's memory is refused before it runs, in one line with advice."""

import dataclasses

import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from bundle.core.errors import DatasetError
from bundle.inference.generator import make_inferer
from bundle.inference.memory import CheckMemoryd, MemorySettings, estimate_inference_memory

GB = 1e9


def volume(shape, name="/data/big.nii.gz") -> MetaTensor:
    """An LR volume of `shape` that allocates nothing (only its shape and file name are read)."""
    return MetaTensor(torch.empty(1, *shape).expand(1, *shape), meta={"filename_or_obj": name})


def test_estimate_by_hand():
    # 10x10x10 LR at x4 -> 64,000 output voxels = 256,000 bytes; whole volume: 5 output-sized buffers;
    # network: 1,000 LR voxels x (3*8*64 + 2*8 + 4*4) channels x 4 bytes; input and its copy: 8,000 bytes
    est = estimate_inference_memory((10, 10, 10), scale=4, sliding_window=False, features=8, growth=4)
    assert est["output"] == 256_000 and est["buffers"] == 5 * 256_000
    assert est["network"] == 4 * 1000 * (3 * 8 * 64 + 16 + 16)
    assert est["total"] == est["buffers"] + est["network"] + 8_000
    # the sliding window adds MONAI's sum and weight maps but bounds the network by the window;
    # test-time augmentation adds 4 output-sized buffers
    sw = estimate_inference_memory(
        (10, 10, 10), sliding_window=True, roi_size=(5, 5, 5), passes=8, features=8, growth=4
    )
    assert sw["buffers"] == 11 * 256_000 and sw["network"] == 4 * 125 * (3 * 8 * 64 + 32)


def test_the_reported_500x500x400_volume():
    est = estimate_inference_memory((500, 500, 400), sliding_window=True, roi_size=(64, 64, 40))
    assert est["output"] == pytest.approx(25.6 * GB)  # the x4 output alone, as float32
    assert est["total"] > 7 * est["output"]


def test_check_refuses_with_one_line_and_advice():
    big = volume((500, 500, 400))
    check = CheckMemoryd("image", sliding_window=False, passes=8, available=64 * GB)
    with pytest.raises(ValueError) as err:
        check({"image": big})
    text = str(err.value)
    assert text.startswith("/data/big.nii.gz: volume [500, 500, 400] needs about ") and "\n" not in text
    assert "64 GB is free" in text and "--sliding_window True" in text and "--uncertainty 0" in text
    assert "25.6 GB" in text  # what the output alone needs
    small = volume((40, 40, 24))
    assert check({"image": small})["image"] is small  # fits: passes unchanged


def test_inference_config_checks_memory_before_running():
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / n) for n in ("inference.json", "demo.json")])
    parser["uncertainty"] = 4
    checks = [t for t in parser.get_parsed_content("preprocessing").transforms if isinstance(t, CheckMemoryd)]
    assert len(checks) == 1
    check = checks[0]
    assert check.settings.passes == 4 and check.settings.features == 16 and check.settings.roi_size == (24, 24, 16)
    check.available = 32 * GB
    with pytest.raises(ValueError, match=r"big.nii.gz: volume \[500, 500, 400\] needs about .* --uncertainty 0"):
        check({"image": volume((500, 500, 400))})


def test_allocation_failure_during_inference_is_one_line_naming_the_volume():
    def network(x):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried")

    inputs = MetaTensor(torch.rand(1, 1, 6, 6, 4), meta={"filename_or_obj": ["/data/scan.nii.gz"]})
    with pytest.raises(DatasetError) as err:
        make_inferer(sliding_window=True, roi_size=(4, 4, 4))(inputs, network)
    text = str(err.value)
    assert text.startswith("/data/scan.nii.gz: out of memory super-resolving volume [6, 6, 4]") and "\n" not in text

    def broken(x):
        raise RuntimeError("shape mismatch")  # other errors are not disguised as memory errors

    with pytest.raises(RuntimeError, match="shape mismatch"):
        make_inferer(sliding_window=False, roi_size=(4, 4, 4))(inputs, broken)


def test_memory_settings_are_fixed_and_estimate_as_the_function_does():
    settings = MemorySettings.of(scale=[4, 4, 1], sliding_window=0, roi_size=[24, 24, 16], passes=None, features=16)
    assert settings == MemorySettings((4, 4, 1), False, (24, 24, 16), 1, 0, 16, 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.passes = 8  # type: ignore[misc]
    expected = estimate_inference_memory((20, 20, 10), 2, (4, 4, 1), False, (24, 24, 16), 1, 0, 16, 32)
    assert settings.estimate((20, 20, 10), channels=2) == expected
    assert CheckMemoryd(
        "image", scale=(4, 4, 1), sliding_window=False, roi_size=(24, 24, 16), features=16
    ).settings == (settings)


def test_the_memory_advice_reads_as_a_sentence_when_only_cropping_helps():
    from bundle.inference.memory import GB, memory_advice

    only_crop = memory_advice({"network": 0.0, "buffers": GB, "output": GB}, True, 0, 1)
    assert only_crop.startswith("crop the volume") and " or " not in only_crop.split("(")[0]
    several = memory_advice({"network": GB, "buffers": GB, "output": GB}, False, 4, 1)
    assert several.startswith("--sliding_window True, --uncertainty 0 or crop the volume"), several
