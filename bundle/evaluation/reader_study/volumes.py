"""Write the evaluation's candidate volumes to disk, one folder per method, for a reader study.

The evaluation (bundle.evaluation.protocol.SREvaluation) scores its volumes in memory and writes only tables and
figures, so a study of "its outputs" regenerates them with the same object, the same config and the same
steps: HR -> LR by one degradation -> B-spline, trilinear, SR and (where the degradation has an operator) the
projected SR, and any further model given (the perceptual release model beside the fidelity one). Output:
<output_dir>/<method>/<case>.nii.gz for each method and <output_dir>/hr/<case>.nii.gz, float32 with the HR's voxel
spacing, ready for `make_study`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from bundle.core.atomic import replace_atomically
from bundle.core.errors import StudyError

__all__ = ["write_candidate_volumes", "REFERENCE_FOLDER"]

logger = logging.getLogger(__name__)
REFERENCE_FOLDER = "hr"


def _save(volume: torch.Tensor, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    arr = np.asarray(volume.detach().cpu().float().numpy()).reshape(volume.shape[-3:])
    img = nib.Nifti1Image(arr.astype(np.float32), affine)
    replace_atomically(path, lambda tmp: nib.save(img, tmp), keep_suffix=True)


def write_candidate_volumes(
    evaluation,
    output_dir: str | Path,
    degradation: str = "kspace",
    max_cases: int | None = 4,
    extra_models: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Run `evaluation`'s pipeline for one `degradation` on its first `max_cases` volumes; returns {method: folder}.

    evaluation: a built SREvaluation (its datalist, transform, model runner, consistency step, scoring).
    extra_models: {method name: checkpoint} of further generators of the same network (e.g. the perceptual release
        model as "sr_perceptual"), each written as inference writes it (the same consistency step as "sr").
    The spacing written is the HR image's (its meta affine when the transform keeps one, else 1 mm).
    """
    from bundle.core.choices import EVAL_METHODS
    from bundle.data.datalist import case_name, transform_or_error
    from bundle.data.degradation import evaluation_lr, evaluation_operator
    from bundle.evaluation.protocol import upsample_baseline
    from bundle.inference.generator import load_generator
    from bundle.trust.consistency import consistent_output

    if degradation not in EVAL_METHODS:
        raise StudyError(f"degradation {degradation!r} is unknown; choose from {tuple(EVAL_METHODS)}")
    out = Path(output_dir)
    runner = evaluation.runner
    if runner.ckpt_path is not None and not Path(runner.ckpt_path).is_file():
        raise StudyError(f"{runner.ckpt_path}: no trained generator; run `make demo` (or training) first")
    runner.load()
    extra_networks = {}
    for name, ckpt in (extra_models or {}).items():
        if not Path(ckpt).is_file():
            raise StudyError(f"{ckpt}: no trained generator for the candidate {name!r}")
        network = copy.deepcopy(runner.network)
        load_generator(network, ckpt, runner.device)
        extra_networks[name] = network.eval()
    datalist = evaluation.datalist[:max_cases] if max_cases else evaluation.datalist
    folders: dict[str, Path] = {}
    for i, item in enumerate(datalist):
        data = transform_or_error(evaluation.transform, item, i)
        hr = torch.as_tensor(data["image"]).float()
        affine = np.asarray(getattr(data["image"], "affine", np.eye(4)), dtype=np.float64)
        case = case_name(item)
        with torch.no_grad():
            lr = evaluation_lr(hr, evaluation.scale, degradation, case)[None]
            preds = {m: upsample_baseline(lr, evaluation.scale, m) for m in evaluation.scoring.baselines}
            network_sr = evaluation.super_resolve(lr).cpu()
            preds["sr"] = evaluation.consistency(network_sr, lr).output.cpu()  # what inference writes
            for name, network in extra_networks.items():
                other_sr = runner.inferer(lr.to(runner.device), network).float().cpu()
                preds[name] = evaluation.consistency(other_sr, lr).output.cpu()
            operator = evaluation_operator(degradation)
            if evaluation.scoring.projection and operator is not None:
                preds["sr_project"] = consistent_output(network_sr, lr, evaluation.scale, operator)
        preds[REFERENCE_FOLDER] = hr
        for method, vol in preds.items():
            folder = folders.setdefault(method, out / method)
            folder.mkdir(parents=True, exist_ok=True)
            _save(vol, affine, folder / f"{case}.nii.gz")
        logger.info("reader-study volumes of %s written (%s)", case, ", ".join(preds))
    return folders
