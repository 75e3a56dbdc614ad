"""Real MRI scans, not derived from the demo's training template, as an MSD-layout test set for evaluation.

    python scripts/make_real_scans.py --output_dir data/real_scans
    python -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json','configs/demo.json']" \
        --dataset_dir data/real_scans --output_dir outputs/eval_real

The scans ship inside the nibabel wheel (its test data, under nibabel's MIT licence), so nothing is downloaded:
- T1_nibabel: `anatomical.nii`, a T1-weighted head scan, 33 x 41 x 25 at 2 mm;
- EPI_nibabel: the first volume of `example4d.nii.gz`, a T2*-weighted EPI, 128 x 96 x 24 at 2 x 2 x 2.2 mm.
Both are other subjects, contrasts and scanners than the MNI152 template the demo trains on: they show whether
the model beats interpolation on data it never saw. Written to a temporary folder, then renamed into place.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
from nibabel.testing import data_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_data import publish_dataset  # noqa: E402

SCANS = {
    "T1_nibabel": ("anatomical.nii", None),
    "EPI_nibabel": ("example4d.nii.gz", 0),  # (file, volume of a 4-D series)
}


def make_real_scans(output_dir: str = "data/real_scans", overwrite: bool = False) -> str:
    """Write dataset.json and imagesTs/ with the scans above; returns the folder."""
    out = Path(output_dir)
    if (out / "dataset.json").is_file() and not overwrite:
        print(f"real scans already present: {out} (use --overwrite to rebuild)")
        return str(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTs").mkdir(parents=True)
    test = []
    for name, (source, volume) in SCANS.items():
        img = nib.load(str(Path(data_path) / source))
        arr = np.asarray(img.dataobj, dtype=np.float32)
        if volume is not None:
            arr = arr[..., volume]
        nib.save(nib.Nifti1Image(arr, img.affine), tmp / "imagesTs" / f"{name}.nii.gz")
        test.append(f"./imagesTs/{name}.nii.gz")
    meta = {
        "name": "real-scans",
        "description": "Real MRI scans from the nibabel wheel's test data, for evaluation only",
        "licence": "MIT (nibabel)",
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


if __name__ == "__main__":
    fire.Fire(make_real_scans)
