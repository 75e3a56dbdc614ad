"""Each peer's own virtualenv under `.venv-peers/<name>/`, built on first use from the base interpreter.

None of them gets a torch of its own: PyPI's torch wheel for Linux is the CUDA build (several GB with its libraries),
so a `.pth` file appends the bundle's site-packages *after* the peer's own, and the peer's pinned packages (ECLARE:
scipy 1.11.4, hence numpy 1.26) are installed in its own venv and win. `--system-site-packages` would not help: the
bundle's torch is in its venv, not in the base interpreter. SOUP-GAN needs TensorFlow with Keras 2 (its model is a
Keras SavedModel), so it gets tensorflow-cpu 2.15 in its venv and no torch at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bundle.evaluation.peers.measure import ROOT, first_error_line, run_measured


@dataclass(frozen=True)
class PeerEnv:
    """A peer's own virtualenv: what pip installs there, and whether it borrows the bundle's torch."""

    name: str
    requirements: tuple[str, ...]
    no_deps: tuple[str, ...] = ()  # installed with --no-deps (their declared deps are in `requirements`)
    bundle_torch: bool = True

    def path(self) -> Path:
        return ROOT / ".venv-peers" / self.name

    def python(self) -> Path:
        return self.path() / "bin" / "python"


PEER_ENVS = {
    # ECLARE 1.0.1 declares torch>=2.5, scipy==1.11.4, radifox-utils==1.0.3: all but torch installed as pinned
    "eclare": PeerEnv(
        "eclare",
        ("nibabel", "numpy", "scipy==1.11.4", "tqdm", "radifox-utils==1.0.3", "matplotlib", "exceptiongroup", "tomli"),
        ("eclare==1.0.1",),
    ),
    # py-SAINT 1.7.0 declares no dependencies; these are what its modules import
    "saint": PeerEnv(
        "saint",
        ("numpy<2", "SimpleITK", "scipy", "imageio", "scikit-image", "tqdm", "matplotlib"),
        ("py-SAINT==1.7.0",),
    ),
    # KevinSR 0.1.20 declares tensorflow-gpu (a stub on PyPI now); its Keras SavedModel needs Keras 2 (TF <= 2.15)
    "soupgan": PeerEnv(
        "soupgan",
        ("tensorflow-cpu==2.15.1", "numpy<2", "scipy", "pydicom", "matplotlib", "pillow", "nibabel"),
        ("KevinSR==0.1.20",),
        bundle_torch=False,
    ),
}


def ensure_peer_env(env: PeerEnv, log_dir: Path) -> Path:
    """Build `env` on first use (stamp file written last); returns its python. Raises RuntimeError with one line."""
    stamp = env.path() / ".installed"
    wanted = json.dumps([env.requirements, env.no_deps, env.bundle_torch])
    if stamp.is_file() and stamp.read_text() == wanted:
        return env.python()
    print(f"building {env.path()} (first use; pip, may take minutes) ...", flush=True)
    shutil.rmtree(env.path(), ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", str(env.path())],
        [str(env.python()), "-m", "pip", "install", "-q", *env.requirements],
    ]
    if env.no_deps:
        steps.append([str(env.python()), "-m", "pip", "install", "-q", "--no-deps", *env.no_deps])
    for i, step in enumerate(steps):
        res = run_measured(step, log_dir / f"venv_step{i}", f"venv {env.name}", timeout_s=3600, report_every_s=60)
        if res["rc"] != 0:
            raise RuntimeError(f"building .venv-peers/{env.name} failed: {res.get('error')}")
    if env.bundle_torch:
        site = next(env.path().glob("lib/python*/site-packages"))
        bundle_site = next(Path(p) for p in sys.path if p.endswith("site-packages") and (Path(p) / "torch").is_dir())
        (site / "zz_bundle_torch.pth").write_text(str(bundle_site) + "\n")  # appended after the peer's own
    stamp.write_text(wanted)
    return env.python()


def soupgan_models(python: Path) -> Path:
    """The folder holding KevinSR's packaged `Thin-to-thin` Keras model, taken from its sdist on first use.

    The model sits in the sdist but not in what pip installs from it (no package data is declared), so the sdist
    is fetched with `pip download --no-deps --no-binary :all:` and the folder extracted next to the venv.
    """
    import tarfile

    folder = python.parents[1] / "KevinSR-models"
    if (folder / "Thin-to-thin" / "saved_model.pb").is_file():
        return folder
    sdist_dir = python.parents[1] / "sdist"
    cmd = [str(python), "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "KevinSR==0.1.20"]
    proc = subprocess.run([*cmd, "-d", str(sdist_dir)], capture_output=True, text=True)
    archives = sorted(sdist_dir.glob("KevinSR-0.1.20*.tar.gz")) + sorted(sdist_dir.glob("kevinsr-0.1.20*.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise RuntimeError(f"pip download KevinSR==0.1.20 failed: {first_error_line(proc.stderr)}")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archives[0]) as tf:
        members = [m for m in tf.getmembers() if "/KevinSR/Thin-to-thin/" in m.name and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name.split("/KevinSR/", 1)[1]
        tf.extractall(tmp, members=members, filter="data")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
