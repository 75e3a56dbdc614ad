"""A real MONAI Label server serves an exported bundle: GET /info/, then POST /infer returns the x4 volume.

Slow: it builds (once, then reuses) a separate virtualenv `.venv-monailabel/` with monailabel 0.8.5, the only
pydicom / dicomweb-client / pynetdicom versions its server starts with, and the bundle's requirements. The
server runs on 127.0.0.1 only, on a copy of the exported app in tmp_path (it writes bin/, logs/ and model/
into the app folder, and .lock, datastore_v2.json and labels/ into the studies folder).

    python -m pytest -q -m monailabel tests/test_monailabel_server.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigParser
from monai.transforms import Compose, SaveImaged, SqueezeDimd

from bundle.export import export
from bundle.inference.overlays import build_network, merge_config

VENV = ROOT / ".venv-monailabel"
# monailabel 0.8.5's server fails to import with newer releases of these three
PINS = ["monailabel==0.8.5", "pydicom==2.4.5", "dicomweb-client==0.59.1", "pynetdicom==2.0.2"]
TINY = {"num_blocks": 1, "features": 8, "growth": 4, "residual_base": "trilinear", "roi_size": [8, 8, 6]}
LR_SHAPE, LR_SPACING, LR_ORIGIN = (10, 9, 6), (2.0, 3.0, 4.0), (10.0, -20.0, 5.0)


def bundle_requirements() -> list[str]:
    """requirements.txt less jsonschema: monailabel needs pydicom-seg, which needs jsonschema<4, and the bundle
    uses jsonschema only for model-zoo metadata checks, never at inference."""
    lines = [s.split("#")[0].strip() for s in (ROOT / "requirements.txt").read_text().splitlines()]
    return [s for s in lines if s and not s.startswith("jsonschema")]


def ensure_venv() -> Path:
    """The python of .venv-monailabel/, built or brought up to date when its stamp differs from the pins."""
    python = VENV / "bin" / "python"
    spec = "\n".join(PINS + bundle_requirements()) + "\n"
    stamp = VENV / ".installed"
    if python.exists() and stamp.is_file() and stamp.read_text() == spec:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--progress-bar", "off"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, timeout=600)
    subprocess.run([*pip, *PINS, *bundle_requirements()], check=True, timeout=2400)
    subprocess.run([str(python), "-c", "import monailabel.main, monai, itk, nibabel"], check=True, timeout=300)
    tmp = stamp.with_name(".installed.tmp")
    with open(tmp, "w") as f:
        f.write(spec)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, stamp)
    return python


def listing(folder: Path) -> list[Path]:
    """Every path under `folder` except Python's bytecode caches (importing the bundle's code writes them)."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if "__pycache__" not in p.parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_sr(bundle_dir: Path, image: Path) -> torch.Tensor:
    """What the served task should return: the exported inference.json's pre/inferer/post, SaveImaged dropped,
    channel squeezed (as MONAI Label's bundle task runs them). Shape (4X, 4Y, 4Z)."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    parser["device"] = "cpu"
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle_dir / "models" / "model.pt", weights_only=True))
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], net.eval())[0]
    post = [t for t in parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveImaged)]
    return Compose([*post, SqueezeDimd(keys="pred", dim=0)])(data)["pred"]


def wait_for_info(port: int, proc: subprocess.Popen, log: Path, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/info/", timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(2)
    pytest.fail(f"no answer on /info/ after {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.monailabel
@pytest.mark.timeout(3600)
def test_server_infers_x4_volume_from_exported_bundle(tmp_path):
    python = ensure_venv()
    overlay = tmp_path / "tiny.json"
    overlay.write_text(json.dumps(TINY))
    torch.manual_seed(0)
    net = build_network(merge_config(ROOT / "configs" / "inference.json", [overlay])[0], ROOT)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    bundle_dir = export(ckpt=str(tmp_path / "model.pt"), overlays=[str(overlay)], name="sr", output_dir=str(tmp_path))
    bundle_files = listing(bundle_dir)

    studies = tmp_path / "studies"
    studies.mkdir()
    affine = np.diag([*LR_SPACING, 1.0])
    affine[:3, 3] = LR_ORIGIN
    lr = np.random.default_rng(0).random(LR_SHAPE).astype(np.float32) * 100
    nib.save(nib.Nifti1Image(lr, affine), studies / "lr.nii.gz")
    app = tmp_path / "app"
    shutil.copytree(bundle_dir / "monailabel", app)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--conf", "bundle_path", str(bundle_dir), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        info = wait_for_info(port, proc, log)
        version = json.loads((bundle_dir / "configs" / "metadata.json").read_text())["version"]
        assert info["models"]["super_resolution"]["version"] == version
        query = urllib.parse.urlencode({"image": "lr", "output": "image"})
        body = urllib.parse.urlencode({"params": json.dumps({"device": "cpu"})}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/infer/super_resolution?{query}", data=body)
        with urllib.request.urlopen(request, timeout=600) as r:
            assert r.status == 200
            (tmp_path / "sr.nii.gz").write_bytes(r.read())
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    sr = nib.load(tmp_path / "sr.nii.gz")
    assert sr.shape == tuple(4 * n for n in LR_SHAPE)
    assert np.allclose(sr.header.get_zooms(), np.array(LR_SPACING) / 4)
    # same field of view: the first voxel centre moves by -3/8 of an LR voxel, the extent is unchanged
    assert np.allclose(sr.affine[:3, :3], np.diag(LR_SPACING) / 4)
    assert np.allclose(sr.affine[:3, 3], np.array(LR_ORIGIN) + np.array(LR_SPACING) * (1 / 4 - 1) / 2)
    assert np.allclose(np.array(sr.shape) * sr.header.get_zooms(), np.array(LR_SHAPE) * LR_SPACING)
    expected = np.asarray(expected_sr(bundle_dir, studies / "lr.nii.gz"))
    assert np.allclose(sr.get_fdata(), expected, atol=1e-4 * float(np.ptp(expected)))
    # the server writes into the app copy and the studies folder, never into the bundle it serves
    assert {"bin", "logs", "model"} <= {p.name for p in app.iterdir()}
    assert listing(bundle_dir) == bundle_files
