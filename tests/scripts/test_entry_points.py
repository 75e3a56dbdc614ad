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
