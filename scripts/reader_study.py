"""Blinded reader studies of SR against interpolation: write the volumes, build the study, analyse the answers.

    # the evaluation's candidates (B-spline, trilinear, SR, projected SR) and HR reference as NIfTI folders
    python scripts/reader_study.py volumes --config_file "['configs/train.json','configs/evaluate.json']" \
        --output_dir outputs/reader_volumes
    # a static study folder (open index.html from disk or any static server); key beside it, never inside
    python scripts/reader_study.py make --volumes outputs/reader_volumes --output_dir outputs/reader_study
    #   ... or any folders with matching file names:
    python scripts/reader_study.py make --candidates "{'sr': 'a/', 'bspline': 'b/'}" --reference hr/ \
        --output_dir study/
    # every reader's exported answers -> report.md, report.json, report.png
    python scripts/reader_study.py analyse --study outputs/reader_study --exports "answers_*.json" \
        --output_dir outputs/reader_report
"""

from __future__ import annotations

import glob
import json
import logging
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.core.errors import StudyError  # noqa: E402
from bundle.evaluation.reader_study.study import key_path_for  # noqa: E402


def volumes(
    config_file: str | list[str] = "['configs/train.json','configs/evaluate.json']",
    output_dir: str = "outputs/reader_volumes",
    degradation: str = "kspace",
    max_cases: int = 4,
    extra_models: dict | None = None,
    **overrides: object,
) -> None:
    """Write the evaluation's candidate volumes (one folder per method, `hr/` the reference) under output_dir.

    extra_models: {method: checkpoint} of further models of the same network, e.g.
    "{'sr_perceptual': 'models/perceptual/model.pt'}" (the perceptual release model beside the fidelity one).

    config_file: the evaluation's config files (as for `monai.bundle run evaluating`); further --key value
    pairs override config entries (e.g. --dataset_dir data/real_scans).
    """
    from monai.bundle import ConfigParser

    from bundle.evaluation.reader_study.volumes import write_candidate_volumes

    files = json.loads(config_file.replace("'", '"')) if isinstance(config_file, str) else list(config_file)
    parser = ConfigParser()
    parser.read_config(files)
    for key, value in overrides.items():
        parser[key] = value
    evaluation = parser.get_parsed_content("evaluation")
    folders = write_candidate_volumes(evaluation, output_dir, degradation, max_cases, extra_models)
    print(f"candidate volumes in {output_dir}: {', '.join(sorted(folders))}")


def make(
    output_dir: str = "outputs/reader_study",
    volumes: str | None = None,
    candidates: dict | None = None,
    reference: str | None = None,
    no_reference: bool = False,
    questions: str | None = None,
    design: str = "all",
    anchor: str | None = None,
    methods: str | list[str] | None = None,
    max_cases: int | None = None,
    seed: int | None = None,
    title: str = "Reader study: super-resolution against interpolation",
    key: str | None = None,
    overwrite: bool = False,
) -> None:
    """Build the study folder from `volumes` (a folder of method folders, `hr/` = reference) or `candidates`.

    methods: with `volumes`, which method folders to include (default all but the reference, in the evaluation's
        order: cubic B-spline, trilinear, SR, projected SR; the blinded panels are shuffled regardless).
    reference: a folder of reference volumes (with `volumes`, default its `hr/`); no_reference: show none.
    questions: a JSON file of questions (default: preference, sharpness, artefacts, hallucination against the
    reference, diagnostic confidence 1-5, comment). design "pairs" + anchor: 2AFC of anchor against each other.
    """
    from bundle.core.choices import METHOD_ORDER
    from bundle.evaluation.reader_study.study import make_study
    from bundle.evaluation.reader_study.volumes import REFERENCE_FOLDER

    if (volumes is None) == (candidates is None):
        raise StudyError(f"{output_dir}: give either --volumes (a folder of method folders) or --candidates")
    if volumes is not None:
        root = Path(volumes)
        if not root.is_dir():
            raise StudyError(f"{root}: volumes folder not found (run `scripts/reader_study.py volumes` first)")
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != REFERENCE_FOLDER)
        # the evaluation's order (cubic B-spline, trilinear, SR, projected SR), then any other folder by name
        found = [m for m in METHOD_ORDER if m in names] + [m for m in names if m not in METHOD_ORDER]
        chosen = [methods] if isinstance(methods, str) else list(methods or found)
        if unknown := sorted(set(chosen) - set(found)):
            raise StudyError(f"{root}: no method folder(s) {unknown}; found {found}")
        candidates = {m: str(root / m) for m in chosen}
        if reference is None and not no_reference and (root / REFERENCE_FOLDER).is_dir():
            reference = str(root / REFERENCE_FOLDER)
    reference = None if no_reference else reference
    key_data = make_study(
        candidates, output_dir, reference, questions, design, anchor, max_cases, seed, title, key, overwrite
    )
    key_file = key or key_path_for(output_dir)
    index = (Path(output_dir) / "index.html").resolve()
    print(f"reader study of {len(key_data['items'])} item(s): open {index.as_uri()}")
    print(f"blinding key (keep it from the readers): {key_file}")
    print(f"then: python scripts/reader_study.py analyse --study {output_dir} --exports 'answers_*.json'")


def analyse(
    study: str = "outputs/reader_study",
    exports: str | list[str] = "answers_*.json",
    output_dir: str = "outputs/reader_report",
    key: str | None = None,
    reps: int = 2000,
) -> None:
    """Read every reader's export (paths or glob patterns) and write report.md, report.json and report.png."""
    from bundle.evaluation.reader_study.analysis import analyse as run

    patterns = [exports] if isinstance(exports, str) else list(exports)
    paths = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise StudyError(f"{pattern}: no reader export matches")
        paths += matched
    run(paths, key or key_path_for(study), output_dir, reps=reps)
    print((Path(output_dir) / "report.md").read_text())
    print(f"report: {Path(output_dir) / 'report.md'}, figure: {Path(output_dir) / 'report.png'}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    fire.Fire({"volumes": volumes, "make": make, "analyse": analyse})
