"""Template-learnt priors: the images they learn from, where `warm_start: auto` finds them, how they are made."""

import json
import sys
from pathlib import Path

import pytest
import torch

from bundle.adaptation.fit import FitSettings
from bundle.adaptation.geometry import find_geometry
from bundle.adaptation.prior import find_prior, prior_path, template_in_plane_images, train_prior
from bundle.core.networks import RRDBNet3D

ROOT = Path(__file__).resolve().parents[2]


def test_template_images_come_from_all_three_axes_of_the_central_cube_and_skip_background():
    volume = torch.zeros(12, 14, 10)
    volume[1:11, 2:12, 0:10] = torch.arange(10, dtype=torch.float32)[:, None, None] / 10 + 0.2  # ramp along x
    images = template_in_plane_images(volume, 8)
    cube = volume[2:10, 3:11, 1:9]
    every = torch.cat([cube, cube.permute(1, 0, 2), cube.permute(2, 0, 1)])
    assert images.shape[1:] == (8, 8) and images.shape[0] <= 24
    kept = [i for i in range(24) if (every[i] > 0.1).float().mean() >= 0.15]
    assert torch.equal(images, every[kept])
    with pytest.raises(ValueError, match="smaller than the prior's cube"):
        template_in_plane_images(volume, 11)


def test_find_prior_names_the_file_by_profile_and_integer_factor(tmp_path):
    geometry = find_geometry([1.0, 1.0, 4.5], None, "gaussian")  # x4.5 upsamples x4: the x4 prior
    assert find_prior(tmp_path, geometry) is None and find_prior(None, geometry) is None
    path = prior_path(tmp_path, "gaussian", 4)
    assert path.name == "gaussian_x4.pt"
    path.write_bytes(b"")
    assert find_prior(tmp_path, geometry) == path
    assert find_prior(tmp_path, find_geometry([1.0, 1.0, 4.0], None, "box")) is None


def test_train_prior_returns_weights_that_load_into_the_adapting_generator_and_changed():
    images = torch.rand(6, 20, 20)
    kwargs = {"features": 8, "growth": 4, "num_blocks": 1, "residual_base": "bspline"}
    state, result = train_prior(images, "box", 5, kwargs, FitSettings(batch_size=2, patch_size=16, max_iterations=3),
                                seconds=float("inf"))  # fmt: skip
    assert result.iterations == 3
    torch.manual_seed(FitSettings().seed)  # train_prior seeds the network's initialisation with settings.seed
    untrained = RRDBNet3D(scale=(1, 1, 5), **kwargs)
    assert untrained.state_dict().keys() == state.keys()
    assert any(not torch.equal(state[k], v) for k, v in untrained.state_dict().items())  # three Adam steps moved it
    untrained.load_state_dict(state, strict=True)


def test_make_adapt_priors_writes_a_record_keeps_a_prior_made_the_same_way_and_refuses_bad_values(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    from bundle.adaptation.priors_training import make_adapt_priors

    paths = make_adapt_priors(profiles=["box"], scales=[5], iterations=2, output_dir=str(tmp_path))
    assert paths == [str(tmp_path / "box_x5.pt")]
    record = json.loads((tmp_path / "box_x5.json").read_text())
    assert record["iterations"] == 2 and record["made_with"]["fit"]["max_iterations"] == 2
    assert record["made_with"]["network"] == json.loads((ROOT / "configs" / "adapt.json").read_text())["adapt_network"]
    state = torch.load(tmp_path / "box_x5.pt", weights_only=True)
    RRDBNet3D(scale=(1, 1, 5), **record["made_with"]["network"]).load_state_dict(state, strict=True)
    stamp = (tmp_path / "box_x5.pt").stat().st_mtime_ns
    make_adapt_priors(profiles=["box"], scales=[5], iterations=2, output_dir=str(tmp_path))
    assert "kept (made with the same settings)" in capsys.readouterr().out
    assert (tmp_path / "box_x5.pt").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="--profiles: 'sinc'"):
        make_adapt_priors(profiles=["sinc"], output_dir=str(tmp_path))
    with pytest.raises(SystemExit, match="--scales: 1 is not an integer >= 2"):
        make_adapt_priors(scales=[1], output_dir=str(tmp_path))
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written
