"""Shared by the reader-study tests: small structured volumes in method folders, and scripted answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# distinctive names, so a search of the study folder for them cannot match by accident
METHODS = ("method_sharpest", "method_trilinear_base", "method_spline_base")
CASES = ("case_one", "case_two", "case_three")
SHAPE = (28, 24, 16)


def phantom(seed: int, blur: float) -> np.ndarray:
    """(x, y, z) float32: an ellipsoid with an off-centre bright blob on a gradient, smoothed by `blur` voxels."""
    from scipy import ndimage

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    rng = np.random.default_rng(seed)
    vol = ((x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.9) ** 2 < 1).astype(np.float32) * 0.6
    cx, cy = rng.uniform(-0.3, 0.3, size=2)
    vol += ((x - cx) ** 2 + (y - cy) ** 2 + z**2 < 0.08) * 0.4 + 0.1 * (x + 1)
    return ndimage.gaussian_filter(vol, blur).astype(np.float32) if blur else vol


def write_method_folders(
    root: Path, methods=METHODS, cases=CASES, reference: bool = True, affine: np.ndarray | None = None
) -> Path:
    """root/<method>/<case>.nii.gz for each method (blur grows with the method's index) and root/hr/; the
    affine is diag(1, 1, 2) (RAS, 2 mm slices) unless given."""
    import nibabel as nib

    affine = np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine
    folders = [*methods, "hr"] if reference else list(methods)
    for m, method in enumerate(folders):
        (root / method).mkdir(parents=True, exist_ok=True)
        for c, case in enumerate(cases):
            blur = 0.0 if method == "hr" else 0.5 + m
            nib.save(nib.Nifti1Image(phantom(c, blur), affine), str(root / method / f"{case}.nii.gz"))
    return root


def scripted_answers(item: dict, reader: int) -> dict:
    """The answers a scripted reader gives to `item` (a key item, so in method space -> labels), deterministic.

    preference/sharpness: reader 0 always picks METHODS[0]; reader 1 picks METHODS[0] on even items, else
    METHODS[1] (the first shown when that is not). artefacts: the last label. hallucination: "none".
    confidence: 5 - index of the method in METHODS (reader 0), 3 for everything (reader 1). comment: text on
    the first item only.
    """
    n = int(item["item"].split("_")[1])
    label_of = dict(zip(item["methods"], item["labels"], strict=True))
    pick = METHODS[0] if reader == 0 or n % 2 == 0 else METHODS[1]
    pick = pick if pick in label_of else item["methods"][0]  # a pair without it, or other method names
    answers = {
        "preference": label_of[pick],
        "sharpness": label_of[pick],
        "artefacts": item["labels"][-1],
        "hallucination": "none",
        "confidence": {
            label_of[m]: (5 - METHODS.index(m)) if reader == 0 and m in METHODS else 3 for m in item["methods"]
        },
    }
    if n == 1:
        answers["comment"] = f"reader {reader} note"
    return answers
