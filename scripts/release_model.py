"""The committed release model: publish a trained one, check it, install it as the model every command uses.

    python scripts/release_model.py publish --ckpt "outputs/release_training/acquired/models/checkpoint_epoch=190.pt" \
        --estimator outputs/release_training/operator_estimator.pt                            # after `make model`
    python scripts/release_model.py check                                                    # sha256 vs large_files.yml
    python scripts/release_model.py install                                                  # -> models/model.pt
    python scripts/release_model.py publish --variant perceptual --ckpt "outputs/.../checkpoint_epoch=196.pt"
    python scripts/release_model.py install --variant perceptual          # -> models/perceptual/ (check likewise)

Two release models of one network (`--variant`): fidelity (the default, models/release/model.pt: a content loss
only, for measurement and reading, projected to be consistent with the LR) and perceptual (models/release/perceptual/
model.pt: fine-tuned with the reference study's loss, configs/release_perceptual.json; sharper texture for research
and visual review, which may be invented). `install --variant perceptual` puts it with the shared estimator in
models/perceptual/ (`--ckpt_dir models/perceptual`); plain `check` checks the fidelity model.

`make model` publishes the release model and the operator estimator of `consistency_operator: auto`, each replaced
atomically (kept when it holds the same weights) with its sha256 in large_files.yml. `make demo` installs both as
models/model.pt and models/operator_estimator.pt (a user's file there, and its calibration.json, is first renamed to
<name>.previous-<n>.pt). Every file is read with `torch.load(..., weights_only=True)` and must load strictly.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import fire
import torch

ROOT = Path(__file__).resolve().parents[1]
ROOT_DIR = str(ROOT)  # the default bundle root of the commands
sys.path.insert(0, str(ROOT))

from bundle.core.atomic import replace_atomically, write_text_atomic  # noqa: E402
from bundle.core.digest import file_sha256  # noqa: E402
from bundle.core.errors import CheckpointError  # noqa: E402
from bundle.inference.generator import read_generator_state  # noqa: E402
from bundle.trust.operator_estimator_training import fewer_right_on_tuning  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))

RELEASE_PATH = "models/release/model.pt"  # as large_files.yml names it, relative to the bundle root
ESTIMATOR_PATH = "models/release/operator_estimator.pt"  # the operator estimator published with it
PERCEPTUAL_PATH = "models/release/perceptual/model.pt"  # the perceptual release model (shares the estimator)
OVERLAYS = ("configs/demo.json",)  # the release model's architecture: the demo's generator (release.json trains it)


class Variant(NamedTuple):
    """One release model: where it is published, the estimator it is published with, where `install` puts it."""

    release: str  # as large_files.yml names it
    install: str  # install's default destination; its folder is the model's --ckpt_dir
    label: str  # as the printed lines name it
    how: str  # how it is made, for the line saying it is not published yet


VARIANTS = {
    "fidelity": Variant(RELEASE_PATH, "models/model.pt", "the release model", "`make model` trains it"),
    "perceptual": Variant(
        PERCEPTUAL_PATH,
        "models/perceptual/model.pt",
        "the perceptual release model",
        "train configs/release_perceptual.json, then `scripts/release_model.py publish --variant perceptual --ckpt ...`",
    ),
}


def variant_of(name: str) -> Variant:
    """The release model `name` names; one CheckpointError line for any other name."""
    if name not in VARIANTS:
        raise CheckpointError(f"--variant {name!r}: expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def check_loads(path: str | Path, root: Path = ROOT) -> dict[str, torch.Tensor]:
    """The generator state dict in `path`, read as inference reads it (`read_generator_state`: weights_only, tensors
    only, finite) and checked to load strictly into the release network: a published model is one inference takes."""
    from monai.bundle import ConfigParser

    state = read_generator_state(path)
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "train.json"), *(str(root / o) for o in OVERLAYS)])
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network", instantiate=True)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0:2]
        raise CheckpointError(f"{path}: does not fit the release network ({' '.join(first)})") from None
    return state


def recorded_hash(large_files: str | Path, path: str = RELEASE_PATH) -> str:
    """hash_val of `path`'s entry in large_files.yml ('' when it has none)."""
    import yaml

    entries = yaml.safe_load(Path(large_files).read_text())["large_files"]
    found = [e for e in entries if e.get("path") == path]
    if not found:
        raise CheckpointError(f"{large_files}: no entry for {path}")
    return str(found[0].get("hash_val") or "")


def record_hash(large_files: str | Path, digest: str, path: str = RELEASE_PATH) -> None:
    """Write `digest` as hash_val of `path`'s entry, keeping every other line (comments included) as it is."""
    lines = Path(large_files).read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.search(rf'path:\s*"?{re.escape(path)}"?\s*$', line)), None)
    if start is None:
        raise CheckpointError(f"{large_files}: no entry for {path}")
    for i in range(start + 1, len(lines)):
        if lines[i].lstrip().startswith("- "):
            break
        if lines[i].lstrip().startswith("hash_val:"):
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            lines[i] = f"{indent}hash_val: {json.dumps(digest)}\n"
            write_text_atomic(large_files, "".join(lines))
            return
    raise CheckpointError(f"{large_files}: the entry for {path} has no hash_val line")


def check_estimator(path: str | Path) -> None:
    """`path` holds an operator estimator (weights only, strict); else one CheckpointError line naming it."""
    from bundle.trust.operator_estimate import load_operator_estimator

    try:
        load_operator_estimator(path)
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from None


def _backup_name(target: Path) -> Path:
    n = 1
    while target.with_name(f"{target.stem}.previous-{n}{target.suffix}").exists():
        n += 1
    return target.with_name(f"{target.stem}.previous-{n}{target.suffix}")


def _copy_atomically(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(dest, lambda tmp: shutil.copyfile(src, tmp), keep_suffix=True)


def publish(ckpt: str, estimator: str | None = None, root: str = ROOT_DIR, variant: str = "fidelity") -> str:
    """Check `ckpt` (and `estimator`), write them to models/release/ (the perceptual variant's model to
    models/release/perceptual/) and record their sha256 in large_files.yml; returns the model's sha256. `ckpt`: a
    state dict or a training checkpoint (only the generator's weights are written). The estimator's record
    (`<estimator>.json`) is copied beside it; one naming fewer tuning LR right than the published one's is not
    published. The perceptual model shares the fidelity model's estimator, so it is published without one."""
    base, chosen = Path(root), variant_of(variant)
    if estimator is not None and chosen.release != RELEASE_PATH:
        raise CheckpointError(
            f"--estimator: {chosen.label} shares {ESTIMATOR_PATH}; publish an estimator with the fidelity model"
        )
    state = check_loads(ckpt, base)
    if estimator is not None:
        check_estimator(estimator)
    dest = base / chosen.release
    dest.parent.mkdir(parents=True, exist_ok=True)
    # torch.save's bytes differ between writes (the archive is named after the temporary file): same weights, same file
    if not _holds(dest, state):
        replace_atomically(dest, lambda tmp: torch.save(state, tmp), keep_suffix=True)
    digest = _record_published(ckpt, dest, chosen.release, base)
    if estimator is not None:
        dest, record = base / ESTIMATOR_PATH, Path(estimator).with_suffix(".json")
        worse = fewer_right_on_tuning(record, dest.with_suffix(".json"))
        if worse:  # a retrained estimator that names fewer tuning LR right does not replace the published one
            print(f"kept {dest}: {estimator} is not published, {worse}")
            return digest
        if not _holds(dest, _estimator_state(estimator), _estimator_state):  # the same weights: file and record stay
            _copy_atomically(Path(estimator), dest)
            if record.is_file():
                _copy_atomically(record, dest.with_suffix(".json"))
        _record_published(estimator, dest, ESTIMATOR_PATH, base)
    return digest


def _estimator_state(path: str | Path) -> dict[str, torch.Tensor]:
    from bundle.trust.operator_estimate import load_operator_estimator

    return load_operator_estimator(path).state_dict()


def _holds(path: Path, state: dict, read: Callable[[Path], dict] = read_generator_state) -> bool:
    """Whether `path` holds `state` (names, bit-equal tensors; read by `read`); a missing or damaged file does not."""
    try:
        old = read(path)
    except (CheckpointError, FileNotFoundError, ValueError):
        return False
    return list(old) == list(state) and all(torch.equal(old[k], state[k]) for k in state)


def _record_published(src: str, dest: Path, rel: str, base: Path) -> str:
    """Record the sha256 of `dest` (published from `src`) as `rel`'s in large_files.yml and say so; returns it."""
    digest = file_sha256(dest)
    record_hash(base / "large_files.yml", digest, rel)
    size = dest.stat().st_size / 1e6
    print(f"published {src} -> {dest} ({size:.2f} MB), sha256 {digest} recorded in large_files.yml")
    return digest


def check(root: str = ROOT_DIR, variant: str = "fidelity") -> str:
    """The release model `variant` names (the fidelity one by default) and the operator estimator load and their
    sha256 are the ones large_files.yml records; returns the model's sha256.

    A perceptual model not published yet (no file and an empty hash_val) fails with one line saying so."""
    base, chosen = Path(root), variant_of(variant)
    path = base / chosen.release
    if not path.is_file() and not recorded_hash(base / "large_files.yml", chosen.release):
        raise CheckpointError(f"{path}: {chosen.label} is not published yet ({chosen.how})")
    digest = _check_recorded(base, chosen.release, lambda p: check_loads(p, base), chosen.how)
    _check_recorded(base, ESTIMATOR_PATH, check_estimator)
    return digest


def _check_recorded(base: Path, rel: str, loads: Callable[[Path], object], how: str = VARIANTS["fidelity"].how) -> str:
    """`base / rel` is there, `loads` accepts it and its sha256 is the one large_files.yml records; returns it."""
    path = base / rel
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (git checkout it, or {how})")
    loads(path)
    digest, recorded = file_sha256(path), recorded_hash(base / "large_files.yml", rel)
    if digest != recorded:
        raise CheckpointError(
            f"{path}: sha256 {digest} is not the {recorded or '(empty)'} of large_files.yml: the file was changed "
            "without `scripts/release_model.py publish`"
        )
    print(f"{path}: loads, sha256 {digest} as recorded")
    return digest


def install(dest: str | None = None, root: str = ROOT_DIR, variant: str = "fidelity") -> str:
    """Copy the checked release model `variant` names to `dest` (default models/model.pt for the fidelity model,
    models/perceptual/model.pt for the perceptual one), with the release's operator estimator beside it; a
    different file already there is renamed, never overwritten.

    Returns the path the previous model was kept at ('' when there was none or it was the release model).
    """
    base, chosen = Path(root), variant_of(variant)
    digest = check(root, variant)
    src, target = base / chosen.release, base / (dest or chosen.install)  # an absolute `dest` stays as it is
    _install_estimator(base / ESTIMATOR_PATH, target.with_name("operator_estimator.pt"))
    kept = ""
    if target.is_file():
        if file_sha256(target) == digest:
            print(f"{target}: already {chosen.label}")
            return ""
        backup = _backup_name(target)
        target.rename(backup)
        kept = str(backup)
        calibration = target.with_name("calibration.json")  # it belongs to the model it was made for
        if calibration.is_file():
            n = backup.stem.rsplit("-", 1)[1]  # model.previous-<n> -> calibration.previous-<n>.json
            calibration.rename(target.with_name(f"calibration.previous-{n}.json"))
        print(f"{target}: a different model was there; kept as {backup} (its calibration beside it)")
    _copy_atomically(src, target)
    print(f"installed {chosen.label} as {target}")
    return kept


def _install_estimator(src: Path, target: Path) -> None:
    """The release's operator estimator beside the installed model; a different one there is renamed first."""
    if target.is_file():
        if file_sha256(target) == file_sha256(src):
            return
        backup = _backup_name(target)
        target.rename(backup)
        print(f"{target}: a different operator estimator was there; kept as {backup}")
    _copy_atomically(src, target)
    print(f"installed the release operator estimator as {target}")


def _quiet(fn):
    """`fn` for the command line: its lines are printed already, so fire need not print the value it returns."""

    @functools.wraps(fn)
    def run(*args, **kwargs) -> None:
        fn(*args, **kwargs)

    return run


if __name__ == "__main__":
    try:
        fire.Fire({"publish": _quiet(publish), "check": _quiet(check), "install": _quiet(install)})
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
