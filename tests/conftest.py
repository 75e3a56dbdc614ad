"""Shared fixtures: a tiny MSD-layout dataset and runners for the MONAI bundle CLI (in-process, and as a new
process for the `integration` tests)."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import NamedTuple

# One share of the cores per pytest-xdist worker, set before torch starts its thread pool: `make test` runs one worker
# per core, and each worker's torch would otherwise start one thread per core; the oversubscribed OpenMP threads then
# spin against each other (the fast suite took 4 min 47 s on 2 cores that way, 3 min 11 s with one thread each).
# The bundle runs a test starts as a new process inherit the setting.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, str(max(1, (os.cpu_count() or 1) // workers)))

import nibabel as nib  # noqa: E402 - after the thread settings above
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if workers:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # also when a plugin imported torch first

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# The ImageNet weights of `make weights` are read only by tests that ask for them (the `real_weights` fixture):
# every other test, and every bundle run it starts, sees an empty weights cache, so no result depends on the machine.
# (pytest-xdist's workers inherit the emptied variable, so the real place is kept for them in MRI_SR_REAL_WEIGHTS_DIR)
os.environ.setdefault(
    "MRI_SR_REAL_WEIGHTS_DIR",
    os.environ.get("MRI_SR_WEIGHTS_DIR") or str(Path.home() / ".cache" / "mri_sr" / "weights"),
)
REAL_WEIGHTS_DIR = Path(os.environ["MRI_SR_REAL_WEIGHTS_DIR"])
os.environ["MRI_SR_WEIGHTS_DIR"] = tempfile.mkdtemp(prefix="mri_sr_no_weights_")
atexit.register(shutil.rmtree, os.environ["MRI_SR_WEIGHTS_DIR"], ignore_errors=True)  # each run left one in /tmp


@pytest.fixture()
def real_weights(monkeypatch) -> Path:
    """The real ImageNet weights cache; skips (saying how to get it) where `make weights` has not run."""
    names = ("vgg19", "vgg16", "alexnet")
    if not all((REAL_WEIGHTS_DIR / f"{n}_imagenet.pt").is_file() for n in names):
        pytest.skip(f"the ImageNet weights are not in {REAL_WEIGHTS_DIR}: `make weights` fetches them (make test does)")
    monkeypatch.setenv("MRI_SR_WEIGHTS_DIR", str(REAL_WEIGHTS_DIR))
    return REAL_WEIGHTS_DIR


# Config stacks as the README gives them, made CPU-tiny by the configs/tiny.json overlay
# (8x8x6 LR volumes, 4x4x4 LR patches -> 16^3 HR patches)
TRAIN = "['configs/train.json','configs/demo.json','configs/tiny.json']"
INFER = "['configs/inference.json','configs/demo.json','configs/tiny.json']"
EVAL = "['configs/train.json','configs/evaluate.json','configs/demo.json','configs/tiny.json']"


def tiny_settings() -> dict:
    """The overrides of configs/tiny.json, for code that sets config ids directly (MONAI Label, scripts)."""
    return json.loads((ROOT / "configs" / "tiny.json").read_text())


def tiny_generator(**kwargs):
    """An RRDBNet3D of the tiny overlay's size (random weights)."""
    from bundle.core.networks import RRDBNet3D

    tiny = tiny_settings()
    kwargs.setdefault("residual_base", tiny["residual_base"])
    return RRDBNet3D(num_blocks=tiny["num_blocks"], features=tiny["features"], growth=tiny["growth"], **kwargs)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from bundle.data.demo_data import make_demo_data

    out = tmp_path_factory.mktemp("data") / "Task01_tiny"
    make_demo_data(output_dir=str(out), num_train=3, num_test=1, shape=(32, 32, 24), seed=1)
    return out


class Finished(NamedTuple):
    """What a finished `python -m monai.bundle ...` left: exit status and its output, all on stderr (the shape of
    subprocess.CompletedProcess that the tests read)."""

    returncode: int
    stdout: str
    stderr: str


def run_bundle_subprocess(*args: str, timeout: int = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `python -m monai.bundle ...` as a user types it, in a new process (for `integration` tests)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_bundle(*args: str, cwd: Path = ROOT) -> Finished:
    """`python -m monai.bundle ...` run in this process: the same Fire command-line parsing, configs, logging and
    one-line errors as the runner, without a new interpreter importing torch and MONAI (seconds per call).

    A one-line error (a SystemExit with a message) gives exit status 1 and the message on stderr, as Python
    prints it; any other exception gives 1 and its traceback.
    """
    import fire
    import monai.bundle.scripts as bundle_scripts

    commands = {
        name: getattr(bundle_scripts, name) for name in ("run", "verify_metadata", "verify_net_in_out", "ckpt_export")
    }
    out = io.StringIO()
    code = 0
    old_cwd, old_path = os.getcwd(), list(sys.path)
    root = logging.getLogger()
    old_handlers, old_level = list(root.handlers), root.level  # the bundle's logging.conf replaces both
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                fire.Fire(commands, command=list(args), name="monai.bundle")
            except SystemExit as err:
                code = err.code if isinstance(err.code, int) else 1
                if not isinstance(err.code, int) and err.code is not None:
                    print(err.code, file=sys.stderr)
            except Exception:  # the runner's process would print the traceback and exit 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        root.handlers[:] = old_handlers  # the bundle's logging.conf pointed its handler at `out`
        root.setLevel(old_level)
    return Finished(code, "", out.getvalue())


@pytest.fixture
def bundle_runner():
    return run_bundle


def ok(proc: Finished | subprocess.CompletedProcess) -> str:
    """The run's whole output, after asserting it ended with exit status 0 (else its last output is shown)."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory):
    """A tiny model trained 3 epochs through the bundle runner, then resumed to 4: (folder, first log, second log).

    With the reference study's fixed k-space simulation, so that the loss falling over 4 epochs is a fair test
    (random degradations redraw every epoch's inputs; their reproducibility is tested on their own).
    """
    work = tmp_path_factory.mktemp("run")
    common = ["--config_file", TRAIN, "--dataset_dir", str(tiny_dataset), "--lr_method", "kspace"]
    common += ["--ckpt_dir", str(work / "models"), "--output_dir", str(work / "outputs")]
    first = ok(run_bundle("run", "training", *common, "--max_epochs", "3"))
    second = ok(run_bundle("run", "training", *common, "--max_epochs", "4"))
    return work, first, second


def lr_volume(path, shape=(8, 8, 6), spacing=(2.0, 3.0, 4.0), seed=0) -> np.ndarray:
    """Write a random LR NIfTI volume (values 0-100) with the given spacing and a shifted origin; its affine."""
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32) * 100, affine), path)
    return affine


def infer(trained, input_path, output_dir, *extra) -> Finished:
    """`run inference` (tiny overlay) of the `trained` model on `input_path`."""
    work = trained[0]
    return run_bundle(
        "run", "inference", "--config_file", INFER, "--input_dir", str(input_path), "--output_dir", str(output_dir),
        "--ckpt_path", str(work / "models" / "model.pt"), *extra,
    )  # fmt: skip


def make_trainer(adversarial_loss="bce", batch_size=2, adversarial_start_iteration=0, **kw):
    """A tiny SRGANTrainer over two random (LR 4x4x3, HR 16x16x12) pairs: (trainer, generator, discriminator)."""
    from torch.utils.data import DataLoader

    from bundle.core.networks import Discriminator3D, RRDBNet3D
    from bundle.training.handlers import LossTermLogger
    from bundle.training.losses import ContentLoss, GANObjective, RandomSlicePerceptualLoss
    from bundle.training.trainer import SRGANTrainer

    torch.manual_seed(0)
    g = RRDBNet3D(features=8, growth=4, num_blocks=1)
    d = Discriminator3D(features=4, num_stages=2)
    data = [{"lr": torch.rand(1, 4, 4, 3), "image": torch.rand(1, 16, 16, 12)} for _ in range(2)]
    loader = DataLoader(data, batch_size=batch_size)
    perceptual = RandomSlicePerceptualLoss(slices_per_plane=2, layer="conv1_2", weights="random")
    content = ContentLoss(perceptual, ssim_kernel_size=7)
    trainer = SRGANTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=loader,
        g_network=g,
        g_optimizer=torch.optim.Adam(g.parameters(), 1e-3),
        d_network=d,
        d_optimizer=torch.optim.Adam(d.parameters(), 1e-3),
        objective=GANObjective(content, adversarial_loss, adversarial_start_iteration=adversarial_start_iteration),
        train_handlers=[LossTermLogger(content.perceptual_timer, log_interval=1)],
        **kw,
    )
    return trainer, g, d


def snapshot(net):
    """Copies of a network's parameters."""
    return [p.detach().clone() for p in net.parameters()]


def changed(before, net):
    """True when any parameter of `net` differs from the `snapshot` taken before."""
    return any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


HOLD = (
    "import sys, time\n"
    "from bundle.core.locking import FolderLock\n"
    "FolderLock(sys.argv[1], 'training', 'ckpt_dir').acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def hold_lock(folder) -> subprocess.Popen:
    """Another real process that holds the lock on `folder` until killed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def refused_while_locked(folder, *args: str) -> str:
    """Run the bundle CLI with `args` (in-process) while another live process holds the lock on `folder`, then kill
    that holder. Asserts the run stopped as a refused run must: exit status 1, no traceback, and exactly one
    `error: ` line, naming the folder and the holder's process id. Returns that line."""
    holder = hold_lock(folder)
    try:
        proc = run_bundle(*args)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert f"{folder}: in use by process {holder.pid}" in errors[0], errors[0]
    return errors[0]
