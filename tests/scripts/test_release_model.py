"""The committed release model: it loads, its sha256 is the recorded one; publish and install never lose a file."""

import hashlib
import itertools
import shutil

import pytest
import release_model as rm
import torch
from conftest import ROOT

from bundle.core.errors import CheckpointError


def _root(tmp_path):
    """A bundle root with the real configs and large_files.yml (the release entries' hashes emptied)."""
    root = tmp_path / "root"
    shutil.copytree(ROOT / "configs", root / "configs")
    text = (ROOT / "large_files.yml").read_text()
    for path in (rm.RELEASE_PATH, rm.ESTIMATOR_PATH, rm.PERCEPTUAL_PATH):
        recorded = rm.recorded_hash(ROOT / "large_files.yml", path)
        text = text.replace(recorded, "") if recorded else text
    (root / "large_files.yml").write_text(text)
    return root


def _estimator(path, seed: int = 0):
    """A random operator estimator saved as scripts/make_operator_estimator.py saves one."""
    from bundle.trust.operator_estimate import OperatorEstimator

    torch.manual_seed(seed)
    torch.save({"state_dict": OperatorEstimator().state_dict(), "features": 16}, path)
    return path


def _demo_state(seed: int) -> dict:
    """A random state dict of the release network's architecture (the demo generator)."""
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "demo.json")])
    return parser.get_parsed_content("network", instantiate=True).state_dict()


def test_committed_release_model_loads_and_matches_large_files():
    digest = rm.check()
    assert digest == hashlib.sha256((ROOT / rm.RELEASE_PATH).read_bytes()).hexdigest()
    assert (ROOT / rm.RELEASE_PATH).stat().st_size <= 5_000_000  # the limit for committed weights
    estimator = ROOT / rm.ESTIMATOR_PATH
    assert (
        rm.recorded_hash(ROOT / "large_files.yml", rm.ESTIMATOR_PATH)
        == hashlib.sha256(estimator.read_bytes()).hexdigest()
    )
    assert estimator.stat().st_size <= 1_000_000
    state = rm.check_loads(ROOT / rm.RELEASE_PATH)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_publish_records_the_hash_and_keeps_the_comments(tmp_path):
    root = _root(tmp_path)
    ckpt = tmp_path / "checkpoint_epoch=3.pt"  # a training checkpoint: only the generator's weights are published
    state = _demo_state(0)
    torch.save({"network": state, "g_optimizer": {"lr": torch.ones(1000)}, "epoch": 3}, ckpt)
    rm.publish(str(ckpt), root=str(root))
    with pytest.raises(CheckpointError, match="operator_estimator.pt: missing"):  # a release is model + estimator
        rm.check(root=str(root))
    estimator = _estimator(tmp_path / "estimator.pt")
    estimator.with_suffix(".json").write_text('{"steps": 1}')  # its record travels with it
    digest = rm.publish(str(ckpt), estimator=str(estimator), root=str(root))
    published = (root / rm.RELEASE_PATH).read_bytes()
    assert digest == hashlib.sha256(published).hexdigest()
    loaded = torch.load(root / rm.RELEASE_PATH, weights_only=True)
    assert sorted(loaded) == sorted(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert (root / rm.ESTIMATOR_PATH).with_suffix(".json").read_text() == '{"steps": 1}'
    assert (
        rm.recorded_hash(root / "large_files.yml", rm.ESTIMATOR_PATH)
        == hashlib.sha256(estimator.read_bytes()).hexdigest()
    )
    text = (root / "large_files.yml").read_text()
    assert rm.recorded_hash(root / "large_files.yml") == digest and text.startswith("# Files the model zoo hosts")
    assert rm.recorded_hash(root / "large_files.yml", "models/model.pt") == ""  # the other entry is untouched
    assert rm.check(root=str(root)) == digest
    (root / rm.RELEASE_PATH).write_bytes(published + b"\0")  # changed without publishing
    with pytest.raises(CheckpointError, match="without `scripts/release_model.py publish`"):
        rm.check(root=str(root))
    (root / rm.RELEASE_PATH).write_bytes(published)
    # the same weights again (torch.save writes other bytes each time): the file and its recorded sha256 stay
    assert rm.publish(str(ckpt), root=str(root)) == digest and (root / rm.RELEASE_PATH).read_bytes() == published
    torch.save({"network": _demo_state(1)}, ckpt)  # other weights: replaced
    assert rm.publish(str(ckpt), root=str(root)) != digest
    (root / rm.RELEASE_PATH).write_bytes(b"damaged")  # an unreadable file there is replaced, not an error
    rm.publish(str(ckpt), root=str(root))
    assert torch.equal(
        torch.load(root / rm.RELEASE_PATH, weights_only=True)["conv_first.weight"], _demo_state(1)["conv_first.weight"]
    )
    # an estimator retrained to the same weights (other bytes, another record): the published file and record stay
    published_estimator = (root / rm.ESTIMATOR_PATH).read_bytes()
    again = _estimator(tmp_path / "retrained.pt")  # torch.save names its archive after the file
    again.with_suffix(".json").write_text('{"steps": 1, "training_seconds": 2}')
    assert again.read_bytes() != published_estimator
    rm.publish(str(ckpt), estimator=str(again), root=str(root))
    assert (root / rm.ESTIMATOR_PATH).read_bytes() == published_estimator
    assert (root / rm.ESTIMATOR_PATH).with_suffix(".json").read_text() == '{"steps": 1}'
    assert (
        rm.recorded_hash(root / "large_files.yml", rm.ESTIMATOR_PATH) == hashlib.sha256(published_estimator).hexdigest()
    )
    rm.publish(str(ckpt), estimator=str(_estimator(tmp_path / "other.pt", seed=1)), root=str(root))  # other weights
    assert (root / rm.ESTIMATOR_PATH).read_bytes() == (tmp_path / "other.pt").read_bytes()
    (root / rm.ESTIMATOR_PATH).write_bytes(b"not an estimator")
    with pytest.raises(CheckpointError, match="operator_estimator.pt"):
        rm.check(root=str(root))
    rm.publish(str(ckpt), estimator=str(again), root=str(root))  # a damaged file there is replaced, not an error
    assert (root / rm.ESTIMATOR_PATH).read_bytes() == again.read_bytes()


def test_publish_refuses_a_file_of_another_network(tmp_path):
    root = _root(tmp_path)
    state = _demo_state(0)
    state.pop(next(iter(state)))
    bad = tmp_path / "other.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"other.pt: does not fit the release network"):
        rm.publish(str(bad), root=str(root))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk.pt: not a readable generator checkpoint"):
        rm.publish(str(tmp_path / "junk.pt"), root=str(root))
    diverged = _demo_state(0)
    first_float = next(k for k, v in diverged.items() if v.is_floating_point())
    diverged[first_float] = torch.full_like(diverged[first_float], float("nan"))
    torch.save(diverged, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError, match=r"diverged.pt: non-finite weights"):
        rm.publish(str(tmp_path / "diverged.pt"), root=str(root))
    assert not (root / rm.RELEASE_PATH).exists() and rm.recorded_hash(root / "large_files.yml") == ""


def test_install_keeps_a_different_model_and_its_calibration(tmp_path):
    root = _root(tmp_path)
    release = tmp_path / "release.pt"
    torch.save(_demo_state(0), release)
    rm.publish(str(release), estimator=str(_estimator(tmp_path / "estimator.pt")), root=str(root))
    models = root / "models"
    _estimator(models / "operator_estimator.pt", seed=1)  # one the user made: kept aside, not overwritten
    own_estimator = (models / "operator_estimator.pt").read_bytes()
    torch.save(_demo_state(1), models / "model.pt")  # the user's own model, calibrated
    own = (models / "model.pt").read_bytes()
    (models / "calibration.json").write_text("{}")
    kept = rm.install(root=str(root))
    assert kept.endswith("model.previous-1.pt") and (models / "model.previous-1.pt").read_bytes() == own
    assert (models / "calibration.previous-1.json").read_text() == "{}"
    assert not (models / "calibration.json").exists()  # it belonged to the other model
    assert (models / "model.pt").read_bytes() == (root / rm.RELEASE_PATH).read_bytes()
    assert rm.install(root=str(root)) == ""  # already installed: nothing moved
    assert (models / "operator_estimator.previous-1.pt").read_bytes() == own_estimator
    assert (models / "operator_estimator.pt").read_bytes() == (root / rm.ESTIMATOR_PATH).read_bytes()
    assert sorted(p.name for p in models.iterdir()) == ["calibration.previous-1.json", "model.previous-1.pt",
                                                        "model.pt", "operator_estimator.previous-1.pt",
                                                        "operator_estimator.pt", "release"]  # fmt: skip


def test_perceptual_variant_is_published_checked_and_installed_beside_the_fidelity_model(tmp_path, capsys):
    root = _root(tmp_path)
    torch.save(_demo_state(0), tmp_path / "fidelity.pt")
    rm.publish(str(tmp_path / "fidelity.pt"), estimator=str(_estimator(tmp_path / "estimator.pt")), root=str(root))
    fidelity = (root / rm.RELEASE_PATH).read_bytes()
    with pytest.raises(
        CheckpointError, match=r"perceptual/model.pt: the perceptual release model is not published yet"
    ):
        rm.check(root=str(root), variant="perceptual")
    assert rm.check(root=str(root)) == hashlib.sha256(fidelity).hexdigest()  # plain check: the fidelity model only
    with pytest.raises(CheckpointError, match=r"--variant 'gan': expected one of fidelity, perceptual"):
        rm.check(root=str(root), variant="gan")
    ckpt = tmp_path / "checkpoint_epoch=196.pt"
    torch.save({"network": _demo_state(2), "d_optimizer": {}, "epoch": 196}, ckpt)
    with pytest.raises(CheckpointError, match="shares models/release/operator_estimator.pt"):
        rm.publish(str(ckpt), estimator=str(tmp_path / "estimator.pt"), root=str(root), variant="perceptual")
    digest = rm.publish(str(ckpt), root=str(root), variant="perceptual")
    assert digest == hashlib.sha256((root / rm.PERCEPTUAL_PATH).read_bytes()).hexdigest()
    assert rm.recorded_hash(root / "large_files.yml", rm.PERCEPTUAL_PATH) == digest
    assert rm.recorded_hash(root / "large_files.yml") == hashlib.sha256(fidelity).hexdigest()  # untouched
    assert (root / rm.RELEASE_PATH).read_bytes() == fidelity
    assert rm.check(root=str(root), variant="perceptual") == digest

    models = root / "models"
    assert rm.install(root=str(root)) == "" and rm.install(root=str(root), variant="perceptual") == ""
    perceptual = models / "perceptual"
    assert (perceptual / "model.pt").read_bytes() == (root / rm.PERCEPTUAL_PATH).read_bytes()
    assert (perceptual / "operator_estimator.pt").read_bytes() == (root / rm.ESTIMATOR_PATH).read_bytes()
    assert (models / "model.pt").read_bytes() == fidelity  # the fidelity model stays the default
    assert "installed the perceptual release model as" in capsys.readouterr().out
    assert rm.install(root=str(root), variant="perceptual") == ""
    assert "already the perceptual release model" in capsys.readouterr().out
    (perceptual / "model.pt").write_bytes(fidelity)  # another model there, calibrated: kept aside, never overwritten
    (perceptual / "calibration.json").write_text("{}")
    kept = rm.install(root=str(root), variant="perceptual")
    assert (
        kept.endswith("perceptual/model.previous-1.pt")
        and (perceptual / "model.previous-1.pt").read_bytes() == fidelity
    )
    assert (perceptual / "calibration.previous-1.json").read_text() == "{}"
    assert sorted(p.name for p in perceptual.iterdir()) == [
        "calibration.previous-1.json", "model.previous-1.pt", "model.pt", "operator_estimator.pt"
    ]  # fmt: skip


def test_ckpt_dir_of_the_installed_perceptual_model_gives_model_calibration_and_estimator():
    """`--ckpt_dir models/perceptual` (or `--ckpt_path models/perceptual/model.pt`): all three from that folder."""
    from monai.bundle import ConfigParser

    folder = str(ROOT / "models" / "perceptual")
    configs = [["inference.json"], ["train.json", "calibrate.json"], ["train.json", "evaluate.json"]]
    for names, override in itertools.product(configs, ({"ckpt_dir": folder}, {"ckpt_path": f"{folder}/model.pt"})):
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / name) for name in names])
        parser.update({"bundle_root": str(ROOT), **override})
        assert parser.get_parsed_content("ckpt_path") == f"{folder}/model.pt"
        assert parser.get_parsed_content("calibration_path") == f"{folder}/calibration.json"
        assert parser.get_parsed_content("operator_estimator_path") == f"{folder}/operator_estimator.pt"


def test_committed_large_files_has_the_perceptual_entry_and_the_published_model_checks():
    assert rm.VARIANTS["perceptual"].install == "models/perceptual/model.pt"
    assert rm.check(variant="perceptual") == hashlib.sha256((ROOT / rm.PERCEPTUAL_PATH).read_bytes()).hexdigest()


def test_publish_keeps_an_estimator_whose_retraining_names_fewer_tuning_lr_right(tmp_path, capsys):
    """A retrained estimator's record names 5 of 12 tuning LR right, the published one's 7: the published file, its
    record and its recorded sha256 stay, and one line says why; 7 of 12 (no worse) is published."""
    import json

    root = _root(tmp_path)
    ckpt = tmp_path / "model.pt"
    torch.save(_demo_state(0), ckpt)
    published = _estimator(tmp_path / "published.pt")
    published.with_suffix(".json").write_text(json.dumps({"tuning": {"volumes": 12, "right": 7}}))
    rm.publish(str(ckpt), estimator=str(published), root=str(root))
    before = (root / rm.ESTIMATOR_PATH).read_bytes()
    worse = _estimator(tmp_path / "worse.pt", seed=1)
    worse.with_suffix(".json").write_text(json.dumps({"tuning": {"volumes": 12, "right": 5}}))
    rm.publish(str(ckpt), estimator=str(worse), root=str(root))
    assert (root / rm.ESTIMATOR_PATH).read_bytes() == before
    assert json.loads((root / rm.ESTIMATOR_PATH).with_suffix(".json").read_text())["tuning"]["right"] == 7
    assert rm.recorded_hash(root / "large_files.yml", rm.ESTIMATOR_PATH) == hashlib.sha256(before).hexdigest()
    assert "is not published, it names 5 of 12 tuning LR right, the published one 7" in capsys.readouterr().out
    as_good = _estimator(tmp_path / "as_good.pt", seed=2)
    as_good.with_suffix(".json").write_text(json.dumps({"tuning": {"volumes": 12, "right": 7}}))
    rm.publish(str(ckpt), estimator=str(as_good), root=str(root))
    assert (root / rm.ESTIMATOR_PATH).read_bytes() == as_good.read_bytes()
