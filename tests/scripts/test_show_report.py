"""`scripts/show_report.py` (the end of `make demo`): gains over cubic B-spline first, trilinear second, and the
worst case over every scan x degradation printed last, from hand-made evaluation summaries."""

from __future__ import annotations

import json

import pytest
from show_report import show_report

from bundle.evaluation.protocol import markdown_table, per_scan_rows, worst_case


def summary_of(scores: dict) -> dict:
    """A summary as the evaluation writes it, from {(case, degradation): {method: (psnr, ssim)}}."""
    rows = [
        {"case": c, "degradation": d, "method": m, "psnr": p, "ssim": s}
        for (c, d), methods in scores.items()
        for m, (p, s) in methods.items()
    ]
    degradations: dict = {}
    for d in dict.fromkeys(d for _, d in scores):
        degradations[d] = {}
        for m in ("bspline", "trilinear", "sr", "sr_project"):
            here = [r for r in rows if r["degradation"] == d and r["method"] == m]
            if here:
                degradations[d][m] = {
                    k: {"mean": sum(r[k] for r in here) / len(here), "sd": 0.0, "n": len(here)}
                    for k in ("psnr", "ssim")
                }
    per_scan = per_scan_rows(rows)
    return {
        "cases": len({c for c, _ in scores}),
        "degradations": degradations,
        "methods": degradations[next(iter(degradations))],
        "per_scan": per_scan,
        "worst_case": worst_case(per_scan),
        "figures": [],
    }


def write(folder, summary):
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "summary.md").write_text(markdown_table(summary))
    return str(folder)


HELD_OUT = {
    ("A", "kspace"): {
        "bspline": (20.0, 0.50),
        "trilinear": (19.5, 0.49),
        "sr": (20.6, 0.53),
        "sr_project": (24.0, 0.6),
    },
    ("A", "area"): {"bspline": (24.0, 0.70), "trilinear": (22.7, 0.62), "sr": (23.8, 0.71)},
}
REAL = {("T1", "kspace"): {"bspline": (15.0, 0.40), "trilinear": (15.1, 0.41), "sr": (15.7, 0.42)}}


def test_gains_over_bspline_first_and_the_worst_case_printed_last(tmp_path, capsys):
    held, real = write(tmp_path / "eval", summary_of(HELD_OUT)), write(tmp_path / "real", summary_of(REAL))
    show_report(report_dir=held, train_log=str(tmp_path / "none.csv"), real_report_dir=real, export_dir="dist/x")
    out = capsys.readouterr().out.splitlines()
    kspace = next(line for line in out if line.startswith("  LR by kspace"))
    assert kspace == (
        "  LR by kspace: SR +0.60 dB PSNR / +0.0300 SSIM over cubic B-spline; +1.10 dB PSNR / +0.0400 SSIM over "
        "trilinear; projected SR +4.00 dB over cubic B-spline"
    )
    assert "  LR by area: SR -0.20 dB PSNR / +0.0100 SSIM over cubic B-spline" in out[out.index(kspace) + 1]
    assert out[-2].startswith("held-out volumes: Worst case over 1 scan(s) x 2 degradation(s): SR -0.20 dB PSNR")
    assert "(A, area)" in out[-2] and "does NOT meet the goal" in out[-2]
    assert out[-1].startswith("real scans: Worst case over 1 scan(s) x 1 degradation(s): SR +0.70 dB PSNR")
    assert "meets the goal" in out[-1] and "NOT" not in out[-1]


def test_an_older_summary_says_the_worst_case_is_missing(tmp_path, capsys):
    old = summary_of(HELD_OUT)
    del old["per_scan"], old["worst_case"]
    show_report(report_dir=write(tmp_path / "eval", old), train_log=str(tmp_path / "none.csv"))
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("held-out volumes: Worst case: not in this summary")


def test_a_missing_report_is_one_error_line(tmp_path):
    with pytest.raises(SystemExit, match=r"summary.md: not found; run the evaluation first"):
        show_report(report_dir=str(tmp_path / "nothing"))


def with_lpips(summary: dict, lpips: dict) -> dict:
    """`summary` with a pooled LPIPS per method (the evaluation's `methods` table)."""
    for method, value in lpips.items():
        summary["methods"][method]["lpips"] = {"mean": value, "sd": 0.0, "n": 1}
    return summary


def test_the_perceptual_model_is_shown_beside_the_fidelity_model_with_its_verdict(tmp_path, capsys):
    fidelity = with_lpips(summary_of(HELD_OUT), {"bspline": 0.20, "trilinear": 0.22, "sr": 0.15})
    perceptual_scores = {k: dict(v, sr=(20.3, 0.52)) for k, v in HELD_OUT.items()}
    perceptual = with_lpips(summary_of(perceptual_scores), {"bspline": 0.20, "trilinear": 0.22, "sr": 0.11})
    held, held_p = write(tmp_path / "eval", fidelity), write(tmp_path / "eval_p", perceptual)
    show_report(report_dir=held, train_log=str(tmp_path / "none.csv"), perceptual_report_dir=held_p)
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("| perceptual model (as written)"))
    assert row.startswith("| perceptual model (as written) | 0.1100 | 20.30 |")
    assert out[-1].startswith("held-out volumes, perceptual model: LPIPS below the fidelity model's yes")
    assert out[-1].endswith("goal met")
    assert (tmp_path / "eval_p" / "model_comparison.md").read_text().startswith("### held-out volumes")
