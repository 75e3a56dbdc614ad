"""Build a blinded, self-contained browser study from folders of volumes (`make_study`).

Layout written (the study folder opens from disk, `index.html`, or from any static web server):

    <output_dir>/index.html, viewer.js, style.css   the page and a small canvas viewer (no network, no library)
    <output_dir>/study.js                            study id, case-list checksum, questions, item ids and labels
    <output_dir>/items/item_001.js ...               per item: the volumes as base64 uint8, in blinded order
    <output_dir>_key.json                            OUTSIDE the folder: which label is which method, per item

A page opened from file:// cannot fetch() files in Chromium, so every data file is a script that registers
itself (`window.STUDY_ITEM(...)`). Method names never appear in the folder: labels are letters, file names are
item numbers, and the NIfTI headers (which may carry a description) are not copied, only the voxels.

Why a hand-written viewer rather than niivue: the page must run from file:// with no network, and niivue loads
volumes by URL (fetch/XHR), which Chromium refuses on file://; its bundle is also ~1 MB per study. Linked
axial/coronal/sagittal canvases over one uint8 volume per candidate need ~300 lines of JavaScript.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bundle.core.atomic import replace_dir_atomically, write_text_atomic
from bundle.core.errors import StudyError

__all__ = ["make_study", "case_list_checksum", "key_path_for", "DEFAULT_QUESTIONS", "load_questions", "NIFTI_SUFFIXES"]

logger = logging.getLogger(__name__)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
FORMAT = "mri-sr-reader-study/1"
QUESTION_TYPES = ("choice", "likert", "text")

# The default questionnaire: a 2AFC-style preference, two image-quality choices, a hallucination check against
# the reference (shown only when there is one), a per-candidate diagnostic-confidence Likert scale, free text.
DEFAULT_QUESTIONS: list[dict[str, Any]] = [
    {"id": "preference", "type": "choice", "text": "Which image would you rather read?"},
    {"id": "sharpness", "type": "choice", "text": "Which image is sharper?", "text_many": "Which image is sharpest?"},
    {
        "id": "artefacts",
        "type": "choice",
        "text": "Which image has MORE artefacts?",
        "text_many": "Which image has the MOST artefacts?",
        "none": "no difference",
    },
    {
        "id": "hallucination",
        "type": "choice",
        "text": "Which image shows structure that is NOT in the reference?",
        "none": "neither",
        "none_many": "none of them",
        "needs_reference": True,
    },
    {
        "id": "confidence",
        "type": "likert",
        "text": "Diagnostic confidence",
        "scale": 5,
        "low": "very low",
        "high": "very high",
    },
    {"id": "comment", "type": "text", "text": "Comments (optional)", "required": False},
]


def key_path_for(study_dir: str | Path) -> Path:
    """Where the blinding key of `study_dir` lives by default: beside the folder, never inside it."""
    study_dir = Path(study_dir)
    return study_dir.parent / f"{study_dir.name}_key.json"


def case_list_checksum(items: Sequence[Mapping[str, Any]]) -> str:
    """sha256 over the study's item list (item id, case, number of candidates): what an export must carry.

    It depends on nothing secret (no method names), so the page can carry it and `analyse` can recompute it
    from the key; an export from another study or another version of this one does not match.
    """
    canon = [[it["item"], it["case"], len(it["labels"])] for it in items]
    return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()


def load_questions(questions: str | Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The questionnaire: None = DEFAULT_QUESTIONS, a JSON file path, or a list of question dicts; validated.

    A question is {"id", "type": choice|likert|text, "text", optional "required" (default true except text),
    "none" (choice: label of a "none of them" option), "text_many"/"none_many" (choice: the question and that
    option's wording where an item shows three or more candidates; a "none" of "neither" becomes "none of them"
    there unless "none_many" says otherwise), "scale" (likert: 2..10 points), "low"/"high" (likert end labels),
    "needs_reference" (shown only when the study has a reference)}.
    """
    source = "default questions"
    if questions is None:
        questions = DEFAULT_QUESTIONS
    elif isinstance(questions, (str, Path)):
        source = str(questions)
        try:
            questions = json.loads(Path(questions).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise StudyError(f"{source}: cannot read the questions ({err})") from None
    if not isinstance(questions, list) or not questions:
        raise StudyError(f"{source}: the questions must be a non-empty JSON list")
    out, seen = [], set()
    for q in questions:
        if not isinstance(q, dict) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", str(q.get("id", ""))):
            raise StudyError(f"{source}: every question needs an 'id' of letters, digits and _ (got {q!r})")
        qid = q["id"]
        if qid in seen:
            raise StudyError(f"{source}: question id {qid!r} is used twice")
        seen.add(qid)
        if q.get("type") not in QUESTION_TYPES:
            raise StudyError(f"{source}: question {qid!r} has type {q.get('type')!r}; choose from {QUESTION_TYPES}")
        q = {"text": qid, "required": q.get("type") != "text", **q}
        for field in ("text", "none", "text_many", "none_many"):
            if field in q and not isinstance(q[field], str):
                raise StudyError(f"{source}: question {qid!r} needs a string {field!r} (got {q[field]!r})")
        if q["type"] == "choice" and str(q.get("none", "")).strip().lower() == "neither":
            q.setdefault("none_many", "none of them")  # "neither" of three or more answers another question
        if q["type"] == "likert":
            scale = q.setdefault("scale", 5)
            if not isinstance(scale, int) or not 2 <= scale <= 10:
                raise StudyError(f"{source}: question {qid!r} needs an integer 'scale' of 2..10 points")
        out.append(q)
    return out


def _case_name(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _volumes(folder: str | Path, role: str) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise StudyError(f"{folder}: {role} folder not found")
    found = {name: p for p in sorted(folder.iterdir()) if (name := _case_name(p)) is not None}
    if not found:
        raise StudyError(f"{folder}: no NIfTI volumes (*.nii, *.nii.gz) in the {role} folder")
    return found


def _load(path: Path) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """(x, y, z) float32 voxels, voxel spacing and orientation (nibabel's axis codes of the affine, e.g. "RAS":
    the anatomical direction each voxel axis grows towards) of a 3-D NIfTI (a trailing singleton axis is dropped).
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # type: ignore[attr-defined]  # a Nifti1Image
    except Exception as err:  # nibabel raises several types for a broken file
        raise StudyError(f"{path}: cannot read the volume ({err})") from None
    data = data.reshape(data.shape[:3]) if data.ndim == 4 and data.shape[3] == 1 else data
    if data.ndim != 3:
        raise StudyError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise StudyError(f"{path}: the volume has non-finite voxels")
    zooms = img.header.get_zooms()  # type: ignore[attr-defined]
    codes = nib.aff2axcodes(img.affine)  # type: ignore[attr-defined]
    orientation = "".join(c if c in "LRAPSI" else "?" for c in codes)
    return data, (float(zooms[0]), float(zooms[1]), float(zooms[2])), orientation


def _quantise(volumes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One intensity mapping for every volume of an item (so window/level compares like with like): the
    0.1-99.9 % range over all of them -> 0..255 uint8, clipped."""
    allv = np.concatenate([v.ravel() for v in volumes])
    lo, hi = np.percentile(allv, [0.1, 99.9])
    hi = hi if hi > lo else lo + 1.0
    return [np.clip(np.rint((v - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8) for v in volumes]


def _b64(volume: np.ndarray) -> str:
    """(x, y, z) uint8 -> base64 of its bytes in x-fastest order (index x + X * (y + Y * z))."""
    return base64.b64encode(np.asfortranarray(volume).tobytes(order="F")).decode("ascii")


def make_study(
    candidates: Mapping[str, str | Path],
    output_dir: str | Path,
    reference: str | Path | None = None,
    questions: str | Sequence[Mapping[str, Any]] | None = None,
    design: str = "all",
    anchor: str | None = None,
    max_cases: int | None = None,
    seed: int | None = None,
    title: str = "Reader study",
    key_path: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a blinded study of the volumes in `candidates` ({method: folder}); returns the key.

    Args:
        candidates: two or more methods, each a folder of NIfTI volumes; cases are matched by file name and
            every folder must hold the same cases with the same shapes.
        output_dir: the study folder (made; refused if it exists and `overwrite` is false).
        reference: optional folder of reference (HR) volumes with the same names, shown as an unblinded panel.
        questions: see `load_questions`.
        design: "all" = every candidate side by side in each item; "pairs" = two-alternative forced choice,
            one item per case and per other method, `anchor` against it.
        anchor: the method every pair contains (design "pairs"); default the first candidate.
        max_cases: use only the first N cases (sorted by name).
        seed: for the random item order and sides (recorded in the key); None = fresh randomness.
        key_path: where the blinding key goes; default `<output_dir>_key.json`. Refused inside the folder.
    """
    if len(candidates) < 2:
        raise StudyError(f"{output_dir}: a study needs at least two candidate methods, got {list(candidates)}")
    if design not in ("all", "pairs"):
        raise StudyError(f"{output_dir}: design {design!r} is unknown; choose 'all' or 'pairs'")
    out = Path(output_dir)
    key_file = Path(key_path) if key_path is not None else key_path_for(out)
    if key_file.resolve().is_relative_to(out.resolve()):
        raise StudyError(f"{key_file}: the blinding key must not be inside the study folder {out}")
    if out.exists() and not overwrite:
        raise StudyError(f"{out}: already exists; choose a new folder or pass overwrite")
    methods = list(candidates)
    if anchor is not None and anchor not in methods:
        raise StudyError(f"{output_dir}: anchor {anchor!r} is not one of the candidates {methods}")
    questions = load_questions(questions)
    if reference is None:
        questions = [q for q in questions if not q.get("needs_reference")]
    found, ref_found, cases = _matched_cases(candidates, reference)
    cases = cases[:max_cases] if max_cases else cases
    rng = random.Random(seed)
    plan = _plan_items(cases, methods, design, anchor, rng)
    study_id = uuid.UUID(int=rng.getrandbits(128)).hex if seed is not None else uuid.uuid4().hex

    def fill(folder: Path) -> dict[str, Any]:
        (folder / "items").mkdir()
        items_public, items_key = [], []
        for n, (case, order) in enumerate(plan, start=1):
            item_id = f"item_{n:03d}"
            labels = [chr(ord("A") + i) for i in range(len(order))]
            ref = ref_found[case] if ref_found is not None else None
            _write_item(folder / "items" / f"{item_id}.js", item_id, case, [found[m][case] for m in order], ref)
            items_public.append({"item": item_id, "case": case, "labels": labels})
            items_key.append({"item": item_id, "case": case, "labels": labels, "methods": order})
        public = {
            "format": FORMAT,
            "study_id": study_id,
            "title": title,
            "case_list_sha256": case_list_checksum(items_public),
            "has_reference": reference is not None,
            "questions": questions,
            "items": items_public,
        }
        write_text_atomic(folder / "study.js", f"window.STUDY = {json.dumps(public, indent=1)};\n")
        static = resources.files("bundle.evaluation.reader_study") / "static"
        for name in ("index.html", "viewer.js", "style.css"):
            write_text_atomic(folder / name, (static / name).read_text())
        return {
            **{k: public[k] for k in ("format", "study_id", "title", "case_list_sha256", "has_reference")},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "design": design,
            "seed": seed,
            "methods": methods,
            "sources": {m: str(Path(f).resolve()) for m, f in candidates.items()},
            "reference": str(Path(reference).resolve()) if reference is not None else None,
            "questions": questions,
            "items": items_key,
        }

    key = replace_dir_atomically(out, fill)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(key_file, json.dumps(key, indent=1))
    logger.info("reader study of %d item(s) written to %s, key %s", len(plan), out, key_file)
    return key


def _matched_cases(
    candidates: Mapping[str, str | Path], reference: str | Path | None
) -> tuple[dict[str, dict[str, Path]], dict[str, Path] | None, list[str]]:
    """({method: {case: file}}, {case: reference file} or None, sorted cases), every method holding the same
    cases and the reference (if any) holding them all; else one line naming the folder that differs."""
    methods = list(candidates)
    found = {m: _volumes(f, f"candidate {m!r}") for m, f in candidates.items()}
    ref_found = _volumes(reference, "reference") if reference is not None else None
    cases = sorted(found[methods[0]])
    for method, vols in found.items():
        missing = sorted(set(cases) ^ set(vols))
        if missing:
            raise StudyError(
                f"{candidates[method]}: candidate {method!r} does not hold the same cases as "
                f"{candidates[methods[0]]} (differ: {', '.join(missing[:5])})"
            )
    if ref_found is not None and (missing := sorted(set(cases) - set(ref_found))):
        raise StudyError(f"{reference}: the reference lacks case(s) {', '.join(missing[:5])}")
    return found, ref_found, cases


def _plan_items(
    cases: Sequence[str], methods: Sequence[str], design: str, anchor: str | None, rng: random.Random
) -> list[tuple[str, list[str]]]:
    """[(case, methods in their blinded left-to-right order)] in a random item order: every method per case
    ("all"), or each other method against `anchor` ("pairs", two-alternative forced choice)."""
    if design == "all":
        plan = [(case, rng.sample(list(methods), len(methods))) for case in cases]
    else:
        first = anchor or methods[0]
        plan = [(case, rng.sample([first, other], 2)) for case in cases for other in methods if other != first]
    rng.shuffle(plan)
    return plan


def _write_item(path: Path, item_id: str, case: str, files: Sequence[Path], reference: Path | None) -> None:
    """One item's data script: the candidates' voxels (and the reference's) quantised together, as base64."""
    loaded = [_load(f) for f in files]
    ref = _load(reference) if reference is not None else None
    shapes = {v[0].shape for v in loaded} | ({ref[0].shape} if ref else set())
    if len(shapes) != 1:
        raise StudyError(f"case {case!r}: the volumes differ in shape {sorted(shapes)}; resample them first")
    quantised = _quantise([v[0] for v in loaded] + ([ref[0]] if ref else []))
    payload = {
        "item": item_id,
        "dims": list(loaded[0][0].shape),
        "spacing": list(loaded[0][1]),
        "orientation": loaded[0][2],  # the page's L/R, A/P, S/I edge markers
        "volumes": [_b64(v) for v in quantised[: len(files)]],
        "reference": _b64(quantised[-1]) if ref else None,
    }
    write_text_atomic(path, f"window.STUDY_ITEM({json.dumps(payload)});\n")
