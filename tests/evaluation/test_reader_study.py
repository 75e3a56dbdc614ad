"""Reader study without a browser: study folder and blinding, the statistics against hand-made references,
refusal of foreign or tampered exports, and the evaluation's volumes written from a real (tiny) config."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EVAL, ROOT
from reader_study_helpers import CASES, METHODS, SHAPE, scripted_answers, write_method_folders

from bundle.core.errors import StudyError
from bundle.evaluation.reader_study.analysis import _bootstrap, analyse, cohen_kappa, fleiss_kappa, wilson
from bundle.evaluation.reader_study.study import key_path_for, make_study


@pytest.fixture(scope="module")
def vols(tmp_path_factory) -> Path:
    return write_method_folders(tmp_path_factory.mktemp("vols"))


def _study(vols: Path, out: Path, **kwargs) -> dict:
    return make_study({m: vols / m for m in METHODS}, out, reference=vols / "hr", seed=5, **kwargs)


def _item_data(study: Path, item: str) -> dict:
    text = (study / "items" / f"{item}.js").read_text()
    return json.loads(re.fullmatch(r"window\.STUDY_ITEM\((.*)\);\n", text, re.S).group(1))


def _export(key: dict, reader: int, name: str | None = None) -> dict:
    return {
        "format": key["format"],
        "study_id": key["study_id"],
        "case_list_sha256": key["case_list_sha256"],
        "reader": name or f"reader{reader}",
        "answers": [
            {"item": it["item"], "case": it["case"], "answers": scripted_answers(it, reader), "time_s": 10.0 + reader}
            for it in key["items"]
        ],
    }


# ---- statistics against published / hand-computed values ---------------------------------------------------


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = wilson(8, 10)  # p = 0.8, n = 10: 0.490-0.943 (Wilson 1927; e.g. Newcombe 1998, table I)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_cohen_kappa_of_the_classic_two_by_two_table():
    # 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no: p_o = 0.7, p_e = 0.5 -> kappa 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["x", "x"], ["x", "x"]))  # no variation: undefined, not 1


def test_fleiss_kappa_of_the_published_example():
    # Fleiss (1971) as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa 0.210
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    assert fleiss_kappa(np.array(table)) == pytest.approx(0.2099, abs=1e-4)
    assert math.isnan(fleiss_kappa(np.array([[2, 0], [1, 0]])))  # unequal raters per subject


def test_bootstrap_resamples_readers_and_items_and_skips_unanswered():
    rng = np.random.default_rng(0)
    assert _bootstrap(np.ones((3, 5)), 200, rng) == (1.0, 1.0)
    # one reader always 1, the other always 0: only resampling readers moves the mean (0, 0.5 or 1)
    split = np.array([[1.0] * 6, [0.0] * 6])
    assert _bootstrap(split, 2000, rng) == (0.0, 1.0)
    # items vary, readers agree: the interval comes from resampling items; unanswered cells (nan) do not count
    items = np.array([[1.0, 0.0, 1.0, 1.0, np.nan], [1.0, 0.0, 1.0, 1.0, 0.0]])
    lo, hi = _bootstrap(items, 2000, rng)
    assert 0.0 < lo < 0.7 < hi <= 1.0
    assert all(math.isnan(v) for v in _bootstrap(np.full((2, 2), np.nan), 10, rng))


# ---- the study folder ---------------------------------------------------------------------------------------


def test_study_hides_the_methods_and_the_key_maps_labels_to_them(vols, tmp_path):
    study = tmp_path / "study"
    key = _study(vols, study)
    assert key_path_for(study).is_file() and not list(study.rglob("*key*"))
    page = b"".join(p.read_bytes() for p in study.rglob("*") if p.is_file())
    for secret in [*METHODS, "hr", str(vols)]:
        assert secret.encode() not in page if secret != "hr" else b'"hr"' not in page
    names = [p.name for p in study.rglob("*")]
    assert not any(m in n for m in METHODS for n in names)
    assert len(key["items"]) == len(CASES) and sorted(it["case"] for it in key["items"]) == sorted(CASES)
    # each label's volume is the method the key says: blur grows with the method's index in METHODS
    for it in key["items"]:
        data = _item_data(study, it["item"])
        assert data["dims"] == list(SHAPE) and data["spacing"] == [1.0, 1.0, 2.0]
        sharp = []
        for b64 in data["volumes"]:
            v = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(SHAPE, order="F").astype(float)
            sharp.append(np.abs(np.diff(v, axis=0)).mean())
        order = [METHODS.index(m) for m in it["methods"]]
        assert np.argsort(sharp)[::-1].tolist() == np.argsort(order).tolist()
    # the sides are randomised but reproducible from the seed
    assert len({tuple(it["methods"]) for it in key["items"]}) > 1
    assert _study(vols, tmp_path / "again")["items"] == key["items"]


def test_items_carry_the_orientation_for_the_edge_markers(tmp_path):
    """The page's L/R, A/P, S/I markers come from the affine: RAS for diag(1, 1, 2), LPS with x and y flipped."""
    ras = write_method_folders(tmp_path / "ras", methods=METHODS[:2], cases=CASES[:1])
    lps = write_method_folders(
        tmp_path / "lps", methods=METHODS[:2], cases=CASES[:1], affine=np.diag([-1.0, -1.0, 2.0, 1.0])
    )
    for vols, codes in ((ras, "RAS"), (lps, "LPS")):
        make_study({m: vols / m for m in METHODS[:2]}, vols / "study", reference=vols / "hr", seed=1)
        assert _item_data(vols / "study", "item_001")["orientation"] == codes


def test_choice_wording_matches_the_number_of_candidates():
    """ "neither" answers a question about two images; with three or more shown the page offers "none of them"
    (`none_many`) and asks for the superlative (`text_many`); a custom "neither" gets the same."""
    from bundle.evaluation.reader_study.study import load_questions

    default = {q["id"]: q for q in load_questions(None)}
    assert default["hallucination"]["none"] == "neither" and default["hallucination"]["none_many"] == "none of them"
    assert default["sharpness"]["text_many"] == "Which image is sharpest?"
    custom = load_questions([{"id": "q", "type": "choice", "text": "Which one?", "none": "Neither"}])
    assert custom[0]["none_many"] == "none of them"
    with pytest.raises(StudyError, match="string 'none_many'"):
        load_questions([{"id": "q", "type": "choice", "none_many": 3}])


def test_pairs_design_is_two_alternative_forced_choice_against_the_anchor(vols, tmp_path):
    key = _study(vols, tmp_path / "s", design="pairs", anchor=METHODS[1])
    assert len(key["items"]) == len(CASES) * (len(METHODS) - 1)
    assert all(len(it["methods"]) == 2 and METHODS[1] in it["methods"] for it in key["items"])


def test_study_without_reference_drops_the_reference_question(vols, tmp_path):
    key = make_study({m: vols / m for m in METHODS[:2]}, tmp_path / "s", seed=1)
    assert "hallucination" not in [q["id"] for q in key["questions"]]
    assert _item_data(tmp_path / "s", "item_001")["reference"] is None


def test_custom_questions_from_a_file_reach_the_page_and_bound_the_answers(vols, tmp_path):
    qfile = tmp_path / "questions.json"
    qfile.write_text(json.dumps([
        {"id": "noise", "type": "choice", "text": "Which is noisier?", "none": "same"},
        {"id": "quality", "type": "likert", "text": "Overall quality", "scale": 7},
    ]))  # fmt: skip
    study = tmp_path / "study"
    key = _study(vols, study, questions=str(qfile))
    assert [q["id"] for q in key["questions"]] == ["noise", "quality"]
    assert '"scale": 7' in (study / "study.js").read_text()
    it = key["items"][0]
    exp = _export(key, 0)
    exp["answers"] = [{"item": it["item"], "case": it["case"], "time_s": 1.0,
                       "answers": {"noise": "none", "quality": {lab: 7 for lab in it["labels"]}}}]  # fmt: skip
    (tmp_path / "ok.json").write_text(json.dumps(exp))
    stats = analyse([tmp_path / "ok.json"], key_path_for(study), tmp_path / "rep", reps=20)
    assert stats["questions"]["noise"]["none"] == 1
    assert all(v["mean"] == 7 for v in stats["questions"]["quality"]["methods"].values())
    exp["answers"][0]["answers"]["quality"][it["labels"][0]] = 8
    (tmp_path / "bad.json").write_text(json.dumps(exp))
    with pytest.raises(StudyError, match=r"outside 1\.\.7"):
        analyse([tmp_path / "bad.json"], key_path_for(study), tmp_path / "rep2", reps=20)


def test_study_refuses_bad_inputs_with_one_line(vols, tmp_path):
    import nibabel as nib

    cands = {m: vols / m for m in METHODS}
    with pytest.raises(StudyError, match="at least two candidate"):
        make_study({METHODS[0]: vols / METHODS[0]}, tmp_path / "a")
    with pytest.raises(StudyError, match="must not be inside the study folder"):
        make_study(cands, tmp_path / "b", key_path=tmp_path / "b" / "key.json")
    (tmp_path / "exists").mkdir()
    with pytest.raises(StudyError, match="already exists"):
        make_study(cands, tmp_path / "exists")
    with pytest.raises(StudyError, match="type 'rating'"):
        make_study(cands, tmp_path / "c", questions=[{"id": "q", "type": "rating"}])
    short = tmp_path / "short"
    short.mkdir()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)), str(short / f"{CASES[0]}.nii.gz"))
    with pytest.raises(StudyError, match="does not hold the same cases"):
        make_study({**cands, "short": short}, tmp_path / "d")
    odd = tmp_path / "odd"
    odd.mkdir()
    for c in CASES:
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(odd / f"{c}.nii.gz"))
    with pytest.raises(StudyError, match="differ in shape") as err:
        make_study({**cands, "odd": odd}, tmp_path / "e")
    assert "\n" not in str(err.value) and not (tmp_path / "e").exists() and not (tmp_path / ".e.partial").exists()


# ---- analysis -----------------------------------------------------------------------------------------------


def test_analysis_matches_hand_counts(vols, tmp_path):
    study = tmp_path / "study"
    key = _study(vols, study)
    paths = []
    for r in (0, 1):
        paths.append(tmp_path / f"r{r}.json")
        paths[-1].write_text(json.dumps(_export(key, r)))
    stats = analyse(paths, key_path_for(study), tmp_path / "report", reps=300)
    n = len(key["items"])
    even = sum(int(it["item"].split("_")[1]) % 2 == 0 for it in key["items"])
    pref = stats["questions"]["preference"]
    assert pref["methods"][METHODS[0]]["chosen"] == n + even and pref["methods"][METHODS[0]]["shown"] == 2 * n
    assert pref["methods"][METHODS[0]]["wilson95"] == pytest.approx(wilson(n + even, 2 * n))
    lo, hi = pref["methods"][METHODS[0]]["bootstrap95"]
    assert 0 <= lo <= (n + even) / (2 * n) <= hi <= 1
    # both readers pick METHODS[0] on even items, they differ on odd ones: Cohen's kappa by hand
    r0 = [METHODS[0]] * n
    r1 = [METHODS[0] if int(it["item"].split("_")[1]) % 2 == 0 else METHODS[1] for it in key["items"]]
    assert pref["agreement"]["cohen"]["reader0 / reader1"]["kappa"] == pytest.approx(cohen_kappa(r0, r1), nan_ok=True)
    assert pref["disagreement"][0]["disagreement"] == 0.5
    conf = stats["questions"]["confidence"]["methods"]
    assert [conf[m]["mean"] for m in METHODS] == [pytest.approx(((5 - i) + 3) / 2) for i in range(len(METHODS))]
    assert stats["time"]["per_reader"]["reader1"]["mean_s"] == pytest.approx(11.0)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Fleiss' kappa" in md and METHODS[0] in md
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_agreement_of_identical_readers_is_one(vols, tmp_path):
    study = tmp_path / "study"
    key = _study(vols, study, design="pairs")
    for name in ("a", "b"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_export(key, 1, name=name)))
    stats = analyse([tmp_path / "a.json", tmp_path / "b.json"], key_path_for(study), tmp_path / "rep", reps=50)
    assert stats["questions"]["preference"]["agreement"]["fleiss"] == pytest.approx(1.0)
    assert stats["questions"]["preference"]["agreement"]["fleiss_items"] == len(key["items"])


def _tamper(exp: dict, what: str) -> dict:
    exp = copy.deepcopy(exp)
    first = exp["answers"][0]
    if what == "study":
        exp["study_id"] = "0" * 32
    elif what == "checksum":
        exp["case_list_sha256"] = "f" * 64
    elif what == "unknown":
        first["item"] = "item_999"
    elif what == "duplicate":
        exp["answers"].append(copy.deepcopy(first))
    elif what == "case":
        first["case"] = "someone_else"
    elif what == "label":
        first["answers"]["preference"] = "Z"
    elif what == "likert":
        first["answers"]["confidence"] = {k: 9 for k in first["answers"]["confidence"]}
    elif what == "missing":
        del first["answers"]["preference"]
    return exp


@pytest.mark.parametrize(
    "what, message",
    [
        ("study", "belongs to study"),
        ("checksum", "case-list checksum differs"),
        ("unknown", "unknown item 'item_999'"),
        ("duplicate", "answered twice"),
        ("case", "the export says 'someone_else'"),
        ("label", "answer 'Z' is not one of"),
        ("likert", "outside 1..5"),
        ("missing", "required question 'preference'"),
    ],
)
def test_foreign_or_tampered_exports_are_refused_in_one_line(vols, tmp_path, what, message):
    study = tmp_path / "study"
    key = _study(vols, study)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_tamper(_export(key, 0), what)))
    with pytest.raises(StudyError, match=re.escape(message)) as err:
        analyse([path], key_path_for(study), tmp_path / "report", reps=10)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "report").exists()


def test_same_reader_twice_and_broken_files_are_refused(vols, tmp_path):
    study = tmp_path / "study"
    key = _study(vols, study)
    a, b, broken = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "broken.json"
    a.write_text(json.dumps(_export(key, 0)))
    b.write_text(json.dumps(_export(key, 1, name="reader0")))
    broken.write_text("{not json")
    with pytest.raises(StudyError, match="reader 'reader0' already exported"):
        analyse([a, b], key_path_for(study), tmp_path / "r", reps=10)
    with pytest.raises(StudyError, match="is not JSON"):
        analyse([broken], key_path_for(study), tmp_path / "r", reps=10)
    edited = json.loads(key_path_for(study).read_text())
    edited["items"][0]["case"] = "other"
    key_path_for(study).write_text(json.dumps(edited))
    with pytest.raises(StudyError, match="does not match its checksum"):
        analyse([a], key_path_for(study), tmp_path / "r", reps=10)


# ---- the evaluation's volumes, through the command line -----------------------------------------------------


def test_volumes_from_the_evaluation_config_then_study_then_analysis(tiny_dataset, tmp_path):
    """`volumes` with the tiny evaluation config (random generator weights; in-process, as importing MONAI in a
    subprocess costs more than the step), then `make`, a hand export and `analyse` on the command line."""
    import nibabel as nib
    from reader_study import volumes

    script = [sys.executable, str(ROOT / "scripts" / "reader_study.py")]
    run = dict(cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = tmp_path / "vols"
    volumes(EVAL, str(out), max_cases=1, dataset_dir=str(tiny_dataset), ckpt_path=None, bundle_root=str(ROOT))
    assert sorted(p.name for p in out.iterdir()) == ["bspline", "hr", "sr", "sr_project", "trilinear"]
    shapes = {nib.load(str(p)).shape for p in out.rglob("*.nii.gz")}
    assert len(shapes) == 1 and len(list(out.rglob("*.nii.gz"))) == 5
    study = tmp_path / "study"
    res = subprocess.run([*script, "make", "--volumes", str(out), "--output_dir", str(study), "--seed", "1",
                          "--methods", "['sr','bspline']"], **run)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "index.html" in res.stdout
    key = json.loads(key_path_for(study).read_text())
    assert key["methods"] == ["sr", "bspline"] and key["has_reference"]
    res = subprocess.run([*script, "make", "--volumes", str(out), "--output_dir", str(tmp_path / "noref"),
                          "--no_reference", "True"], **run)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    noref = json.loads(key_path_for(tmp_path / "noref").read_text())
    assert not noref["has_reference"] and noref["methods"] == ["bspline", "trilinear", "sr", "sr_project"]
    res = subprocess.run([*script, "make", "--volumes", str(out), "--output_dir", str(study)], **run)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "already exists" in res.stderr
    item = key["items"][0]
    label = dict(zip(item["methods"], item["labels"], strict=True))["sr"]
    answers = {"preference": label, "sharpness": label, "artefacts": "none", "hallucination": "none",
               "confidence": {lab: 4 for lab in item["labels"]}}  # fmt: skip
    answer = {"item": item["item"], "case": item["case"], "answers": answers, "time_s": 3.5}
    export = {**_export(key, 0), "answers": [answer]}
    (tmp_path / "answers_x.json").write_text(json.dumps(export))
    res = subprocess.run([*script, "analyse", "--study", str(study), "--exports", str(tmp_path / "answers_*.json"),
                          "--output_dir", str(tmp_path / "report"), "--reps", "50"], **run)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads((tmp_path / "report" / "report.json").read_text())
    assert stats["questions"]["preference"]["methods"]["sr"]["chosen"] == 1
    assert stats["questions"]["preference"]["methods"]["bspline"]["chosen"] == 0
    assert stats["time"]["median_s"] == 3.5


def test_noisy_volumes_are_the_evaluations_noisy_lr_upsampled(tiny_dataset, tmp_path):
    """The reader study's "noisy" candidates come from the same seeded LR the evaluation scores (one function,
    seeded by the case name): its B-spline volume equals B-spline of `evaluation_lr(hr, ..., "noisy", case)`,
    and the projection uses the slice profile's operator."""
    import nibabel as nib
    import torch
    from monai.bundle import ConfigParser

    from bundle.data.datalist import case_name
    from bundle.data.degradation import evaluation_lr
    from bundle.evaluation.protocol import upsample_baseline
    from bundle.evaluation.reader_study.volumes import write_candidate_volumes

    parser = ConfigParser()
    parser.read_config(json.loads(EVAL.replace("'", '"')))
    parser["dataset_dir"], parser["bundle_root"], parser["ckpt_path"] = str(tiny_dataset), str(ROOT), None
    evaluation = parser.get_parsed_content("evaluation")
    other = tmp_path / "other.pt"  # a second generator of the same network, as the perceptual model is
    torch.manual_seed(5)
    torch.save({k: torch.randn_like(v) * 0.05 for k, v in evaluation.runner.network.state_dict().items()}, other)
    folders = write_candidate_volumes(evaluation, tmp_path, "noisy", max_cases=1, extra_models={"sr_other": str(other)})
    assert "sr_project" in folders and "sr_other" in folders
    item = evaluation.datalist[0]
    case = case_name(item)
    hr = torch.as_tensor(evaluation.transform(item)["image"]).float()
    expected = upsample_baseline(evaluation_lr(hr, evaluation.scale, "noisy", case)[None], evaluation.scale, "bspline")
    written = np.asarray(nib.load(str(folders["bspline"] / f"{case}.nii.gz")).dataobj)
    np.testing.assert_allclose(written, expected[0, 0].numpy(), atol=1e-5)
    clean = upsample_baseline(evaluation_lr(hr, evaluation.scale, "gaussian", case)[None], evaluation.scale, "bspline")
    assert float(np.abs(written - clean[0, 0].numpy()).max()) > 1e-3  # the noise is there
    sr, sr_other = (np.asarray(nib.load(str(folders[m] / f"{case}.nii.gz")).dataobj) for m in ("sr", "sr_other"))
    assert sr.shape == sr_other.shape and float(np.abs(sr - sr_other).max()) > 1e-3  # its own weights, not the first's
    with pytest.raises(StudyError, match="nowhere.pt: no trained generator for the candidate 'x'"):
        write_candidate_volumes(evaluation, tmp_path, "noisy", 1, {"x": str(tmp_path / "nowhere.pt")})
