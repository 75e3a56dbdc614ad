"""The evaluation's tables against a hand-made set of scores: cubic B-spline named first everywhere, the gain over
it as the headline (PSNR and SSIM), the per-scan x degradation table and the worst case over it."""

from __future__ import annotations

import csv
import json
import math

import pytest

from bundle.evaluation.protocol import (
    BASELINES,
    Scoring,
    gain_table,
    markdown_table,
    per_scan_table,
    summarise_rows,
    worst_case_line,
    write_evaluation,
)

# (case, degradation): {method: (psnr, ssim)}; methods deliberately listed trilinear first
SCORES = {
    ("A", "kspace"): {
        "trilinear": (19.5, 0.49),
        "bspline": (20.0, 0.50),
        "sr": (20.6, 0.53),
        "sr_project": (24.0, 0.60),
    },
    ("A", "area"): {"trilinear": (22.7, 0.62), "bspline": (24.0, 0.70), "sr": (23.8, 0.71), "sr_project": (24.1, 0.72)},
    ("B", "kspace"): {
        "trilinear": (18.2, 0.41),
        "bspline": (18.0, 0.40),
        "sr": (18.9, 0.39),
        "sr_project": (20.0, 0.5),
    },
    ("B", "area"): {"trilinear": (20.0, 0.55), "bspline": (21.0, 0.60), "sr": (21.7, 0.62), "sr_project": (22.0, 0.63)},
}


def rows_from(scores: dict) -> list[dict]:
    return [
        {"case": case, "degradation": deg, "method": m, "psnr": p, "ssim": s, "mse": 10 ** (-p / 10)}
        for (case, deg), methods in scores.items()
        for m, (p, s) in methods.items()
    ]


LR_METHODS = ("kspace", "area")


def summarise(tmp_path, scores=SCORES) -> dict:
    return summarise_rows(rows_from(scores), LR_METHODS)


def test_bspline_is_the_first_baseline_and_every_table_lists_it_first(tmp_path):
    assert BASELINES[0] == "bspline"
    summary = summarise(tmp_path)
    for table in (summary["methods"], *summary["degradations"].values()):
        assert list(table) == ["bspline", "trilinear", "sr", "sr_project"]
    md = markdown_table(summary)
    method_rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "/" not in line]
    firsts = [name for name in method_rows if name in ("bspline", "trilinear", "sr", "sr_project")]
    assert firsts[:4] == ["bspline", "trilinear", "sr", "sr_project"]
    header = gain_table(summary)[0]
    assert header.index("SR - cubic B-spline, PSNR") < header.index("SR - cubic B-spline, SSIM")
    assert header.index("SR - cubic B-spline, SSIM") < header.index("SR - trilinear, PSNR")


def scoring(baselines):
    return Scoring(baselines, lpips_weights=None, lpips_slices_per_plane=None, foreground_threshold=0.05,
                   num_figures=0, projection=True)  # fmt: skip


def test_a_config_naming_trilinear_first_still_gets_bspline_first():
    assert scoring(["trilinear", "bspline"]).baselines == ("bspline", "trilinear")
    assert scoring(["trilinear"]).baselines == ("trilinear",)
    with pytest.raises(ValueError, match="unknown baselines"):
        scoring(("cubic",))


def test_gains_per_degradation_against_hand_computed_means(tmp_path):
    summary = summarise(tmp_path)
    g = summary["gains"]
    # kspace: SR mean (20.6 + 18.9) / 2 = 19.75, B-spline (20 + 18) / 2 = 19; SSIM 0.46 - 0.45
    assert g["kspace"]["sr"]["bspline"]["psnr"] == pytest.approx(0.75)
    assert g["kspace"]["sr"]["bspline"]["ssim"] == pytest.approx(0.01)
    assert g["kspace"]["sr"]["trilinear"]["psnr"] == pytest.approx(19.75 - 18.85)
    assert g["area"]["sr"]["bspline"]["psnr"] == pytest.approx(22.75 - 22.5)
    assert g["area"]["sr_project"]["bspline"]["psnr"] == pytest.approx(23.05 - 22.5)
    assert list(g["kspace"]["sr"]) == ["bspline", "trilinear"]
    rows = gain_table(summary)
    assert rows[2] == "| kspace | +0.75 | +0.0100 | +0.90 | +0.0100 | +3.00 | +0.1000 | missing |"


def test_per_scan_table_and_worst_case_against_a_hand_made_summary(tmp_path):
    summary = summarise(tmp_path)
    per_scan = summary["per_scan"]
    assert [(e["case"], e["degradation"]) for e in per_scan] == list(SCORES)
    a_area = per_scan[1]
    assert list(a_area["psnr"]) == ["bspline", "trilinear", "sr", "sr_project"]
    assert a_area["sr_gain_over_bspline"]["psnr"] == pytest.approx(-0.2)
    assert a_area["sr_gain_over_bspline"]["ssim"] == pytest.approx(0.01)
    assert a_area["sr_project_gain_over_bspline"]["psnr"] == pytest.approx(0.1)
    wc = summary["worst_case"]
    assert wc["psnr"]["gain"] == pytest.approx(-0.2) and (wc["psnr"]["case"], wc["psnr"]["degradation"]) == (
        "A",
        "area",
    )
    assert wc["ssim"]["gain"] == pytest.approx(-0.01) and (wc["ssim"]["case"], wc["ssim"]["degradation"]) == (
        "B",
        "kspace",
    )
    assert not wc["goal_met"] and wc["scans"] == 2
    table = per_scan_table(summary)
    assert (
        table[0] == "| scan | degradation | cubic B-spline | trilinear | SR | SR projected, true operator | "
        "**SR - cubic B-spline** | SR best shift (voxels) |"
    )
    assert (
        table[3]
        == "| A | area | 24.00 / 0.700 | 22.70 / 0.620 | 23.80 / 0.710 | 24.10 / 0.720 | **-0.20 / +0.0100** |  |"
    )
    line = worst_case_line(summary)
    assert "SR -0.20 dB PSNR over cubic B-spline (A, area)" in line and "SSIM -0.0100 (B, kspace)" in line
    assert "2 scan(s) x 2 degradation(s)" in line and "does NOT meet the goal" in line
    md = markdown_table(summary)
    assert md.index(line) < md.index("| A | area |") < md.index("LR made by **kspace**")


def test_worst_case_meets_the_goal_only_when_every_scan_does(tmp_path):
    good = {k: {**v, "sr": (v["bspline"][0] + 0.6, v["bspline"][1] + 0.001)} for k, v in SCORES.items()}
    wc = summarise(tmp_path, good)["worst_case"]
    assert wc["goal_met"] and wc["psnr"]["gain"] == pytest.approx(0.6)
    almost = dict(good)
    almost[("B", "area")] = {**good[("B", "area")], "sr": (21.6, 0.5999)}  # +0.6 dB but SSIM just below
    wc = summarise(tmp_path, almost)["worst_case"]
    assert not wc["goal_met"] and wc["ssim"]["case"] == "B" and wc["ssim"]["gain"] == pytest.approx(-0.0001)


def test_a_non_finite_sr_is_unscored_and_fails_the_goal(tmp_path):
    good = {k: {**v, "sr": (v["bspline"][0] + 1.0, v["bspline"][1] + 0.01)} for k, v in SCORES.items()}
    rows = [r for r in rows_from(good) if not (r["case"] == "B" and r["degradation"] == "area" and r["method"] == "sr")]
    rows.append({"case": "B", "degradation": "area", "method": "sr", "missing": "3 non-finite voxel(s)"})
    summary = summarise_rows(rows, LR_METHODS)
    entry = summary["per_scan"][3]
    assert "sr_gain_over_bspline" not in entry and entry["missing"] == ["sr"]
    wc = summary["worst_case"]
    assert wc["unscored"] == ["B area"] and not wc["goal_met"]
    assert "not scored: B area" in worst_case_line(summary)
    assert "| B | area | 21.00 / 0.600 | 20.00 / 0.550 | missing |" in markdown_table(summary)


def test_per_case_csv_and_summary_json_keep_old_keys_and_add_gains(tmp_path):
    rows = rows_from(SCORES)
    summary = summarise_rows(rows, LR_METHODS)
    write_evaluation(tmp_path, rows, summary)
    with open(tmp_path / "per_case.csv", newline="") as f:
        reader = csv.DictReader(f)
        table = list(reader)
    fields = reader.fieldnames
    assert fields[:3] == ["case", "degradation", "method"]
    assert fields.index("psnr_gain_over_bspline") < fields.index("psnr_gain_over_trilinear")
    assert [r["method"] for r in table[:4]] == ["trilinear", "bspline", "sr", "sr_project"]  # rows as scored
    sr = next(r for r in table if r["case"] == "A" and r["degradation"] == "area" and r["method"] == "sr")
    assert float(sr["psnr_gain_over_bspline"]) == pytest.approx(-0.2)
    assert float(sr["ssim_gain_over_trilinear"]) == pytest.approx(0.09)
    assert next(r for r in table if r["method"] == "bspline")["psnr_gain_over_bspline"] == ""
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert {"cases", "degradations", "methods", "lpips_missing_reason", "uncertainty_passes", "figures"} <= set(saved)
    assert {"gains", "per_scan", "worst_case"} <= set(saved)
    assert math.isclose(saved["worst_case"]["psnr"]["gain"], -0.2, abs_tol=1e-9)
    assert worst_case_line(saved) in (tmp_path / "summary.md").read_text()


def test_an_older_summary_without_per_scan_still_renders(tmp_path):
    """The export's --results may be a summary.json written before the per-scan table existed."""
    scores = {
        "sr": {"psnr": {"mean": 31.25, "sd": 0.0, "n": 1}},
        "trilinear": {"psnr": {"mean": 30.0, "sd": 0, "n": 1}},
    }
    md = markdown_table({"cases": 1, "degradations": {"kspace": scores}, "methods": scores})
    assert "| kspace | missing | missing | +1.25 |" in md
    assert "not in this summary" in md and "| scan |" not in md


def test_the_per_scan_table_says_which_operator_the_sr_was_projected_with(tmp_path):
    rows = rows_from(SCORES)
    for r in rows:
        if r["method"] == "sr":  # as the evaluation records its consistency step
            projected = r["degradation"] == "kspace"
            r.update(operator="kspace" if projected else "area", projected=projected, mixed=r["case"] == "B")
    summary = summarise_rows(rows, LR_METHODS)
    assert summary["per_scan"][0]["sr_consistency"] == {"operator": "kspace", "projected": True, "mixed": False}
    table = per_scan_table(summary)
    assert table[0].endswith("| SR best shift (voxels) | SR projected with |") and table[1].count("|---") == 9
    assert table[2].endswith("| kspace |") and table[3].endswith("| not projected |")
    assert table[5].endswith("| mixture (most probable: area) |")
    plain = per_scan_table(summarise(tmp_path))  # no consistency step recorded: no such column
    assert "projected with" not in plain[0] and plain[1].count("|---") == 8
