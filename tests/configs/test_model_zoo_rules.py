"""What the model zoo's checks require of the bundle's files: metadata schema, JSON layout, large files."""

import json
import subprocess

from conftest import ROOT, ok, run_bundle


def test_metadata_is_valid_against_model_zoo_schema():
    ok(
        run_bundle(
            "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath",
            str(ROOT / "tests" / "assets" / "meta_schema_20240725.json"),
        )
    )  # fmt: skip
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "image" in meta["network_data_format"]["inputs"] and "pred" in meta["network_data_format"]["outputs"]


def test_json_configs_indented_by_four_spaces():
    for path in (ROOT / "configs").glob("*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4), f"{path.name} is not indented by 4 spaces"


def test_model_zoo_file_rules():
    import yaml

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    large = {f["path"] for f in yaml.safe_load((ROOT / "large_files.yml").read_text())["large_files"]}
    assert "models/model.pt" in large
    for name in ("configs/metadata.json", "configs/inference.json", "LICENSE", "docs/README.md"):
        assert name in tracked
    too_big = [f for f in tracked if (ROOT / f).stat().st_size >= 1_000_000 and f not in large]
    assert not too_big, too_big
