"""Configs are one source of truth: overlays never copy what another config (or another place) already holds."""

import json
from collections import defaultdict

from conftest import ROOT

# inference.json stands alone on purpose (MONAI Label reads it without overlays), so it may repeat train.json
STANDALONE = {"inference.json", "metadata.json"}
MIN_LEAVES = 3  # a subtree of three or more values is worth a reference instead of a copy


def _leaves(node) -> int:
    if isinstance(node, dict):
        return sum(_leaves(v) for v in node.values())
    if isinstance(node, list):
        return sum(_leaves(v) for v in node)
    return 1


def _subtrees(node, path: str):
    """Yield (path, canonical JSON) of every dict and list below `node`, `node` included."""
    if isinstance(node, (dict, list)):
        yield path, json.dumps(node, sort_keys=True)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            yield from _subtrees(child, f"{path}#{key}")


def repeated_subtrees(configs: dict[str, dict]) -> list[list[str]]:
    """Groups of places (`file:id#path`) that hold the same subtree of at least MIN_LEAVES values.

    Only the largest repeated subtrees are reported (not every part of one).
    """
    places = defaultdict(list)
    for name, config in configs.items():
        for key, value in config.items():
            for path, text in _subtrees(value, key):
                if _leaves(json.loads(text)) >= MIN_LEAVES:
                    places[text].append(f"{name}:{path}")
    repeated = {text: where for text, where in places.items() if len(where) > 1}
    maximal = []
    for text, where in repeated.items():
        inside_bigger = any(
            other != text and all(any(w.startswith(o + "#") for o in owhere) for w in where)
            for other, owhere in repeated.items()
        )
        if not inside_bigger:
            maximal.append(sorted(where))
    return sorted(maximal)


def test_guard_finds_a_copied_subtree():
    transforms = [{"_target_": "LoadImaged", "keys": "image", "image_only": True}]
    configs = {"a.json": {"t": transforms, "x": 1}, "b.json": {"u": {"v": transforms}}, "c.json": {"s": [1, 2]}}
    assert repeated_subtrees(configs) == [["a.json:t", "b.json:u#v"]]
    assert repeated_subtrees({"a.json": {"p": [1, 2], "q": [1, 2]}}) == []  # below the size worth a reference
    assert repeated_subtrees({"a.json": {"p": {"a": 1, "b": 2, "c": 3}, "q": {"a": 1, "b": 2, "c": 3}}}) != []


def test_no_config_copies_another():
    configs = {
        path.name: json.loads(path.read_text())
        for path in sorted((ROOT / "configs").glob("*.json"))
        if path.name not in STANDALONE
    }
    assert {"train.json", "evaluate.json", "demo.json", "tiny.json", "multi_gpu_train.json"} <= set(configs)
    assert repeated_subtrees(configs) == []


def test_inference_json_uses_the_ids_of_train_json():
    """inference.json repeats train.json's network and preprocessing ids, with the same defaults."""
    train = json.loads((ROOT / "configs" / "train.json").read_text())
    infer = json.loads((ROOT / "configs" / "inference.json").read_text())
    assert infer["network_def"] == train["network_def"]
    for key in ("scale", "num_blocks", "features", "growth", "residual_base", "modality_channel",
                "intensity_percentiles", "sliding_window", "roi_size", "overlap"):  # fmt: skip
        assert infer[key] == train[key], key
    assert "val_roi_size" not in train and infer["inferer"] == train["inferer"]
