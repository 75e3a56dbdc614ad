"""Each thin script's fire command line is its package function (the logic and its tests live in the package)."""

from __future__ import annotations

import sys

import fire
import pytest


def fired(monkeypatch, main) -> object:
    """What `main()` hands to fire.Fire."""
    seen = []
    monkeypatch.setattr(fire, "Fire", lambda component, *a, **k: seen.append(component))
    main()
    return seen[0]


def test_export_bundle_fires_bundle_export_and_its_errors_are_one_line(tmp_path, monkeypatch):
    import export_bundle

    from bundle.export import export

    (tmp_path / "x").mkdir()
    argv = ["export_bundle.py", "--ckpt", str(tmp_path / "model.pt"), "--name", "x", "--output_dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as err:
        export_bundle.main()
    assert err.value.code == f"error: {tmp_path / 'x'}: already exists; pass --overwrite True to replace it"
    assert fired(monkeypatch, export_bundle.main) is export


def test_make_demo_data_fires_the_data_stage_function(monkeypatch):
    import make_demo_data

    from bundle.data.demo_data import make_demo_data as package_function

    assert fired(monkeypatch, make_demo_data.main) is package_function


def test_make_real_scans_fires_the_evaluation_stage_function(monkeypatch):
    import make_real_scans

    from bundle.evaluation.real_scans import make_real_scans as package_function

    assert fired(monkeypatch, make_real_scans.main) is package_function


def test_benchmark_fires_the_evaluation_stage_benchmarks(monkeypatch):
    import benchmark

    from bundle.evaluation.benchmark import COMMANDS

    commands = fired(monkeypatch, benchmark.main)
    assert {name: fn.__wrapped__ for name, fn in commands.items()} == COMMANDS
    assert set(COMMANDS) == {"train_step", "perceptual", "inference", "data", "all"}


def test_make_adapt_priors_fires_the_adaptation_stage_function(monkeypatch):
    import make_adapt_priors

    from bundle.adaptation.priors_training import make_adapt_priors as package_function

    assert fired(monkeypatch, make_adapt_priors.main) is package_function
