"""Configs read like the data flow: the model runner and the consistency step are one component each, which
inference, the evaluation and the calibration reference, and no component the configs build takes a long list of
arguments (settings are grouped into components instead)."""

import pytest
from config_stacks import CONFIGS, STACKS, components
from monai.bundle import ConfigParser

MAX_ARGUMENTS = 10
# check_ids takes every id it checks by design
KWARGS = {"bundle.config_check.check_ids"}


def parser_of(stack: str, *overlays: str) -> ConfigParser:
    return ConfigParser(ConfigParser.load_config_files([str(CONFIGS / f) for f in (*STACKS[stack], *overlays)]))


@pytest.mark.parametrize("stack", STACKS)
def test_no_component_takes_more_than_ten_arguments(stack):
    config = parser_of(stack).get()
    long = {
        f"{where} ({c['_target_']}): {n}"
        for where, c in components(config)
        if (n := sum(not k.startswith("_") for k in c)) > MAX_ARGUMENTS and c["_target_"] not in KWARGS
    }
    assert long == set()


def test_inference_references_the_runner_and_the_step_it_defines():
    config = parser_of("inference").get()
    assert config["evaluator"]["network"] == "$@model_runner.network"
    assert config["evaluator"]["inferer"] == "$@model_runner.sr_inferer(@calibration)"
    assert "amp" not in config["evaluator"] and config["handlers"].count("@model_runner") == 1
    steps = [t for t in config["postprocessing"]["transforms"] if "step" in t]
    assert [t["_target_"].rsplit(".", 1)[1] for t in steps] == ["DataConsistencyd", "CalibrateUncertaintyd"]
    assert all(t["step"] == "@consistency_step" for t in steps)
    names = ("ckpt_path", "amp", "amp_dtype", "operator", "estimator_path")  # given to those two only
    used = {f"{w}#{k}" for w, c in components(config) if w != "config_check" for k in c if k in names}
    assert {u.split("#")[0] for u in used} == {"model_runner", "consistency_step"}, used


@pytest.mark.parametrize("stack, name", [("evaluate", "evaluation"), ("calibrate", "calibration")])
def test_the_evaluation_and_the_calibration_run_the_one_runner_and_step(stack, name, tiny_dataset):
    parser = parser_of(stack, "demo.json", "tiny.json")
    parser["dataset_dir"], parser["ckpt_path"] = str(tiny_dataset), None
    built = parser.get_parsed_content(name)
    assert built.runner is parser.get_parsed_content("model_runner")
    assert (built.step if name == "calibration" else built.consistency) is parser.get_parsed_content("consistency_step")
    runner, step = built.runner, parser.get_parsed_content("consistency_step")
    assert (
        runner.uncertainty == 8 and runner.scale == (4, 4, 4) and runner.network is parser.get_parsed_content("network")
    )
    assert (step.mode, step.operator, step.estimator_path) == (
        "project",
        "auto",
        parser.get_parsed_content("operator_estimator_path"),
    )
