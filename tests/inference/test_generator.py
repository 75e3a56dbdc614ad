"""Generator loading for inference, evaluation and calibration: every fault is one line naming the file."""

import pytest
import torch
from conftest import tiny_generator

from bundle.core.errors import CheckpointError
from bundle.core.networks import RRDBNet3D
from bundle.inference.generator import generator_size, load_generator


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_sizes_are_read_back_from_a_state_dict():
    state = RRDBNet3D(num_blocks=3, features=16, growth=8).state_dict()
    assert generator_size(state) == {"num_blocks": 3, "features": 16, "growth": 8}


def test_matching_checkpoint_loads_plain_or_nested(tmp_path):
    trained = tiny_generator()
    for name, payload in (("plain.pt", trained.state_dict()), ("nested.pt", {"model": trained.state_dict()})):
        torch.save(payload, tmp_path / name)
        fresh = tiny_generator()
        load_generator(fresh, tmp_path / name)
        assert all(
            torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values(), strict=True)
        )


def test_checkpoint_of_another_size_names_both_sizes_and_the_overlay_that_fits(tmp_path):
    torch.save(tiny_generator().state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as err:
        load_generator(RRDBNet3D(), tmp_path / "model.pt")  # the full-size network of configs/inference.json
    text = one_line(err)
    assert text.startswith(f"{tmp_path / 'model.pt'}: a generator with num_blocks=1, features=8, growth=4")
    assert "(num_blocks=10, features=64, growth=32)" in text and "configs/tiny.json" in text


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "not a checkpoint"])
def test_unusable_checkpoint_is_one_line(tmp_path, damage):
    path = tmp_path / "model.pt"
    if damage != "missing":
        torch.save(tiny_generator().state_dict(), path)
        data = path.read_bytes()
        path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "not a checkpoint": b"hello"}[damage])
    with pytest.raises(CheckpointError) as err:
        load_generator(tiny_generator(), path)
    expected = {"missing": "not found", "empty": "is empty", "truncated": "not a readable", "not a checkpoint": "not a"}
    assert one_line(err).startswith(f"{path}: ") and expected[damage] in str(err.value)
