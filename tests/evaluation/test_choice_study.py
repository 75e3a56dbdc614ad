"""The operator-choice study: what the step delivers, and what the rule without the output's veto delivered."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import EVAL, ROOT

from bundle.core.choices import OPERATORS
from bundle.evaluation.choice_study import choice_table, operator_choice_study, summarise_choices
from bundle.trust.consistency import BLUR_EXPLAINED
from bundle.trust.operator_estimate import EXPLAINED_RESIDUAL, OperatorEstimator


def test_the_study_scores_the_delivered_output_and_the_one_without_the_veto(trained, tiny_dataset, tmp_path):
    from monai.bundle import ConfigParser

    estimator = OperatorEstimator(features=4)  # zero weights: "area, 0.96, sure" whatever the LR
    for p in estimator.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        estimator.classify.bias.copy_(torch.tensor([math.log({"area": 0.96}.get(op, 0.02)) for op in OPERATORS]))
    path = tmp_path / "estimator.pt"
    torch.save({"state_dict": estimator.state_dict(), "features": 4}, path)
    parser = ConfigParser()
    parser.read_config(json.loads(EVAL.replace("'", '"')))
    parser["bundle_root"] = str(ROOT)
    parser.update({"dataset_dir": str(tiny_dataset), "ckpt_path": str(trained[0] / "models" / "model.pt")})
    parser.update({"consistency": "project", "consistency_operator": "auto", "operator_estimator_path": str(path)})
    parser.update({"output_dir": str(tmp_path / "eval"), "uncertainty": 0})
    rows = operator_choice_study(parser.get_parsed_content("evaluation"), ("kspace", "kspace_hamming", "area"))
    assert [(r.degradation, r.truth) for r in rows] == [
        ("kspace", "kspace"),
        ("kspace_hamming", "kspace"),
        ("area", "area"),
    ]
    for r in rows:
        assert r.agrees == (r.relative_residual <= EXPLAINED_RESIDUAL)
        assert r.sure  # 0.96 on the blur the output picks
        assert r.sure_and_wrong == (r.degradation == "kspace")  # the CNN always says a blur
        # a sure blur estimate: projected where the blur explains the output (as the rule before did), else the
        # network's SR is delivered
        explained = r.relative_residual <= BLUR_EXPLAINED[r.estimated]
        assert r.gain_delivered == pytest.approx(r.gain_without_veto if explained else r.gain_sr, abs=1e-6)
        assert r.gain_without_veto != pytest.approx(r.gain_sr, abs=1e-6)
    summary = summarise_choices(rows)
    assert summary["sure_and_wrong"] == 1 and summary["lr_volumes"] == 3  # kspace_hamming is not counted
    assert summary["gain_delivered"]["worst"] == min(r.gain_delivered for r in rows)
    table = choice_table(summary)
    assert "sure and wrong (k-space against blur): 1" in table and table.count("| BRATS_004 |") == 3


def test_an_empty_study_is_one_clear_error():
    with pytest.raises(ValueError, match="scored no LR volume"):
        summarise_choices([])
