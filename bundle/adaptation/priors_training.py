"""The warm starts of `run adapting`, trained from the 1 mm MNI152 template: models/adapt_priors/<profile>_x<scale>.pt.

    python scripts/make_adapt_priors.py                       # the command line: gaussian and box, x4 and x5
    python scripts/make_adapt_priors.py --profiles "['box']" --scales "[3]" --iterations 4000

Each prior is the adapting generator (`adapt_network` of configs/adapt.json) trained with the adapting settings
(`adapt_fit`) for a fixed number of iterations on the template's in-plane pairs along all three of its axes
(`bundle.adaptation.prior`), so it does not depend on the machine's speed. Written
atomically with a record beside it (`<profile>_x<scale>.json`: iterations, seconds, sha256, settings); a prior
whose record says it was made with the same iterations and settings is kept, so a second call costs nothing.
8.5-10 minutes per prior of 6,000 iterations on 2 CPU cores (506-611 s measured, alone on the machine).

Template licence: see docs/DATA_LICENSES.md (ICBM 2009a, McConnell Brain Imaging Centre); the template is a
population average, never a scan any table of docs/results.md evaluates on.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import torch

from bundle.adaptation.fit import FitSettings
from bundle.adaptation.prior import prior_path, template_in_plane_images, train_prior
from bundle.core.atomic import replace_atomically, write_text_atomic
from bundle.core.choices import SLICE_PROFILES
from bundle.core.digest import file_sha256
from bundle.data.demo_data import template_path
from bundle.data.robust_intensity import robust_normalise

ROOT = Path(__file__).resolve().parents[2]

PRIORS_DIR = str(ROOT / "models" / "adapt_priors")  # where `run adapting`'s `adapt_priors_dir` looks
CUBE = 180  # side (mm) of the template's central cube whose images are the pairs: the brain, little background


def _save(state: dict[str, torch.Tensor], path: str) -> None:
    torch.save(state, path)


def adapt_defaults(config: Path = ROOT / "configs" / "adapt.json") -> tuple[dict, dict]:
    """(adapt_network, adapt_fit) as `run adapting` uses them, so that a prior fits the workflow's generator."""
    parsed = json.loads(config.read_text())
    return dict(parsed["adapt_network"]), dict(parsed["adapt_fit"])


def normalised_template(config: Path = ROOT / "configs" / "inference.json") -> torch.Tensor:
    """The template T1 (X, Y, Z) at 1 mm, mapped to [0, 1] by the `intensity_percentiles` and the normalisation
    (`robust_normalise`) `run adapting` uses."""
    volume = np.asarray(cast(nib.Nifti1Image, nib.load(template_path("t1"))).dataobj, dtype=np.float32)
    lower, upper = json.loads(config.read_text())["intensity_percentiles"]
    return robust_normalise(torch.from_numpy(volume)[None], str(template_path("t1")), lower, upper)[0][0]


def make_adapt_priors(
    profiles: tuple[str, ...] | list[str] = ("gaussian", "box"),
    scales: tuple[int, ...] | list[int] = (4, 5),
    iterations: int = 6000,
    output_dir: str = PRIORS_DIR,
    threads: int = 0,
) -> list[str]:
    """Train (or keep, when already made the same way) one prior per profile and scale; returns their paths."""
    for profile in profiles:
        if profile not in SLICE_PROFILES:
            raise SystemExit(f"error: --profiles: {profile!r} is not one of {tuple(SLICE_PROFILES)}")
    for scale in scales:
        if not (isinstance(scale, int) and scale >= 2):
            raise SystemExit(f"error: --scales: {scale!r} is not an integer >= 2")
    if not (isinstance(iterations, int) and iterations >= 1):
        raise SystemExit(f"error: --iterations: expected an integer >= 1, got {iterations!r}")
    if threads:
        torch.set_num_threads(threads)
    network_kwargs, fit_kwargs = adapt_defaults()
    settings = replace(FitSettings(**fit_kwargs), max_iterations=iterations)
    template = normalised_template()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for scale in scales:
        images = template_in_plane_images(template, CUBE // scale * scale)
        for profile in profiles:
            path = prior_path(out, profile, scale)
            record_path = path.with_suffix(".json")
            made_with = {"network": network_kwargs, "fit": asdict(settings), "images": int(images.shape[0])}
            if path.is_file() and record_path.is_file():
                record = json.loads(record_path.read_text())
                if record.get("made_with") == made_with and record.get("sha256") == file_sha256(path):
                    print(f"{path}: kept (made with the same settings)")
                    written.append(str(path))
                    continue
            print(f"{path}: training {iterations} iterations on {images.shape[0]} template images", flush=True)
            state, result = train_prior(images, profile, scale, network_kwargs, settings, seconds=math.inf)
            replace_atomically(path, functools.partial(_save, state))
            record = {
                "profile": profile,
                "scale": scale,
                "iterations": result.iterations,
                "seconds": round(result.seconds, 1),
                "final_loss": result.losses[-1] if result.losses else None,
                "sha256": file_sha256(path),
                "source": f"{template_path('t1').name} (nilearn; MNI152 2009a, see docs/DATA_LICENSES.md)",
                "command": "python scripts/make_adapt_priors.py " + " ".join(sys.argv[1:]),
                "made_with": made_with,
            }
            write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
            print(f"{path}: {result.iterations} iterations in {result.seconds:.0f} s", flush=True)
            written.append(str(path))
    return written
