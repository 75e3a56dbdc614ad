"""Command-line overrides that MONAI would evaluate, resolve or instantiate are refused in one line naming the id,
before anything in them runs (docs/SECURITY.md)."""

import pytest
from conftest import INFER, lr_volume, run_bundle

from bundle.config_check import check_overrides


def last_error(proc) -> str:
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert sum(line.startswith("error:") for line in lines) == 1, lines
    return lines[-1]


@pytest.mark.parametrize("option", ["--input_dir", "--output_dir", "--ckpt_path", "--adapt_fit"])
def test_an_override_that_would_run_code_is_refused_before_it_runs(tmp_path, option):
    pwned = tmp_path / "pwned.txt"
    code = f"$__import__('pathlib').Path({str(pwned)!r}).write_text('ran')"
    value = f"{{'seed': {code!r}}}" if option == "--adapt_fit" else code
    configs = "['configs/inference.json','configs/adapt.json']" if option == "--adapt_fit" else INFER
    out = [] if option == "--output_dir" else ["--output_dir", str(tmp_path / "o")]
    proc = run_bundle("run", "inference", "--config_file", configs, option, value, *out)
    line = last_error(proc)
    assert line.startswith(f"error: config id {option[2:]}: the command-line value"), line
    assert not pwned.exists()  # the code never ran
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "option, value",
    [
        ("--input_dir", "@ckpt_dir"),  # a reference
        ("--output_dir", "%configs/metadata.json#version"),  # a macro
        ("--network_def", "{'_target_': 'os.getcwd'}"),  # a component: any callable
        ("--network_def#_target_", "os.getcwd"),
    ],
)
def test_references_macros_and_targets_on_the_command_line_are_refused(tmp_path, option, value):
    out = [] if option == "--output_dir" else ["--output_dir", str(tmp_path / "o")]
    proc = run_bundle("run", "inference", "--config_file", INFER, option, value, *out)
    line = last_error(proc)
    assert line.startswith(f"error: config id {option[2:]}: the command-line value"), line


def test_the_configs_own_value_given_again_passes_the_check(tmp_path):
    own = "$'auto' if @lr_method in ('random', 'trilinear') else @lr_method"  # configs/inference.json's own
    proc = run_bundle("run", "inference", "--config_file", INFER, "--consistency_operator", own,
                      "--input_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"))  # fmt: skip
    line = last_error(proc)
    assert "command-line value" not in line and "missing" in line  # stopped later, at the missing input


def test_without_a_command_line_nothing_is_refused():
    check_overrides()  # a config built from Python (no `monai.bundle run` on the stack): nothing to check


@pytest.mark.parametrize("content", [b"", b"not a torch file", "pickle"])
def test_a_damaged_operator_estimator_stops_the_run_at_start_in_one_line(tmp_path, content):
    import pickle

    estimator = tmp_path / "operator_estimator.pt"
    estimator.write_bytes(pickle.dumps(print) if content == "pickle" else content)
    scan = tmp_path / "in.nii.gz"
    lr_volume(scan)
    proc = run_bundle("run", "inference", "--config_file", INFER, "--input_dir", str(scan), "--output_dir",
                      str(tmp_path / "o"), "--ckpt_path", str(tmp_path / "no_model.pt"), "--consistency_operator",
                      "auto", "--operator_estimator_path", str(estimator))  # fmt: skip
    line = last_error(proc)
    assert line.startswith(f"error: {estimator}: not a"), line  # before the model, the inputs and the network
    assert not (tmp_path / "o").exists()


def test_the_repositorys_config_from_another_folder_without_bundle_root_says_what_to_do(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user's shell: the bundle not importable
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(ROOT / "configs" / "inference.json"),
         "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    line = last_error(proc)
    assert line.startswith("error: config id bundle_root: ") and "--bundle_root" in line, line
    assert str(tmp_path) in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "workflow, configs", [("training", ["train.json"]), ("evaluating", ["train.json", "evaluate.json"])]
)
def test_training_configs_from_another_folder_without_bundle_root_say_what_to_do(tmp_path, workflow, configs):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user's shell: the bundle not importable
    files = str([str(ROOT / "configs" / name) for name in configs])
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", files,
         "--dataset_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    line = last_error(proc)
    assert line.startswith(f"error: config id bundle_root: {tmp_path} holds no bundle code") and "--bundle_root" in line
    assert not (tmp_path / "out").exists()


def test_a_relative_config_path_from_another_folder_is_the_documented_message(tmp_path):
    """MONAI reads `--config_file` before any of the bundle's code runs, so a relative path that does not exist
    from the current folder ends MONAI's traceback; docs/troubleshooting.md gives that last line and the advice."""
    from conftest import ROOT

    proc = run_bundle("run", "inference", "--config_file", "configs/inference.json", cwd=tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "FileNotFoundError: Cannot find the config file: configs/inference.json.", last
    rows = [r for r in (ROOT / "docs" / "troubleshooting.md").read_text().splitlines() if r.startswith(f"| `{last}`")]
    assert len(rows) == 1, "docs/troubleshooting.md has no row for MONAI's missing-config message"
    advice = rows[0].split("|")[2]
    assert "repository root" in advice and "absolute" in advice and "--bundle_root" in advice, advice


def test_unknown_id_names_the_closest_id_at_its_level():
    from monai.bundle import ConfigParser

    from bundle.config_check import unknown_id

    own = ConfigParser({"uncertainty": 0, "adapt_fit": {"max_iterations": 5}, "roi_size": [1, 2]})
    assert unknown_id(own, "uncertainty") is None and unknown_id(own, "adapt_fit#max_iterations") is None
    assert unknown_id(own, "roi_size#1") is None and unknown_id(own, "_meta_#version") is None
    assert "did you mean uncertainty?" in unknown_id(own, "uncertianty")
    assert "adapt_fit has no 'max_iteration'; did you mean adapt_fit#max_iterations?" in unknown_id(
        own, "adapt_fit#max_iteration"
    )
    assert "did you mean" not in unknown_id(own, "zzzqqq")


@pytest.mark.integration
def test_a_misspelt_id_on_the_real_command_line_is_one_line_naming_the_closest_id(tmp_path):
    from conftest import run_bundle_subprocess

    proc = run_bundle_subprocess(
        "run", "inference", "--config_file", "configs/inference.json", "--uncertianty", "8",
        "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "o"),
    )  # fmt: skip
    line = last_error(proc)
    assert line.startswith("error: config id uncertianty: unknown id") and "did you mean uncertainty?" in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "workflow, configs, option, closest",
    [
        ("training", "['configs/train.json','configs/demo.json']", "--max_epoch", "max_epochs"),
        ("evaluating", "['configs/train.json','configs/evaluate.json']", "--eval_lr_method", "eval_lr_methods"),
        ("calibrating", "['configs/train.json','configs/calibrate.json']", "--coverage_targt", "coverage_target"),
        ("adapting", "['configs/inference.json','configs/adapt.json']", "--adapt_fit#max_iteration",
         "adapt_fit#max_iterations"),
    ],
)  # fmt: skip
def test_every_workflow_refuses_an_unknown_id_before_anything_is_built(tmp_path, workflow, configs, option, closest):
    out = ["--output_dir", str(tmp_path / "o")]
    proc = run_bundle("run", workflow, "--config_file", configs, option, "3", "--dataset_dir", str(tmp_path), *out)
    line = last_error(proc)
    assert line.startswith(f"error: config id {option[2:]}: unknown id") and f"did you mean {closest}?" in line, line
    assert not (tmp_path / "o").exists()
