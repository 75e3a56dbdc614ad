"""Defaults live in the configs: no default of a class or function the configs build contradicts the value the
config passes it (the code would otherwise behave differently when called from Python than from the runner)."""

import inspect
import json

import config_stacks
import pytest
from config_stacks import STACKS, components
from monai.bundle import ConfigParser
from monai.utils import optional_import


def literal(value):
    """The plain value of a config entry, or None when it is computed (an expression, a component, a macro)."""
    if isinstance(value, str) and value.startswith(("$", "%")):
        return None
    if isinstance(value, dict):
        return None
    if isinstance(value, list):
        return value if all(literal(v) is not None or v is None for v in value) else None
    return value


def setting(config: dict, value):
    """The value of a user setting that a component argument refers to (`@id`, a top-level id holding a literal,
    or a reference to one); None for an argument written in the component itself (a per-use choice such as
    `allow_missing_keys`, not a setting with a default) or computed."""
    if not (isinstance(value, str) and value.startswith("@")):
        return None
    return resolve(config, value)


def resolve(config: dict, value, depth: int = 0):
    """A reference `@id` followed to the literal it names (None when computed); literals as they are."""
    if isinstance(value, str) and value.startswith("@") and depth < 8:
        path = value[1:].split("#")
        node = config
        for key in path:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return None
        return resolve(config, node, depth + 1)
    return literal(value)


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def disagreements(files: list[str]) -> list[str]:
    config = ConfigParser.load_config_files([str(config_stacks.CONFIGS / f) for f in files])
    own = ConfigParser.load_config_file(str(config_stacks.CONFIGS / files[-1]))
    found = []
    for where, component in components(own):
        target = component["_target_"]
        if not target.startswith("bundle."):
            continue  # MONAI's and torch's own defaults are theirs
        module, _, name = target.rpartition(".")
        obj, ok = optional_import(module, name=name)
        assert ok, f"{where}: {target} cannot be imported"
        init = obj.__init__ if inspect.isclass(obj) else obj
        if not getattr(init, "__module__", "").startswith("bundle."):
            continue  # a bundle subclass that keeps its MONAI parent's arguments and their defaults
        parameters = inspect.signature(obj).parameters
        for key, raw in component.items():
            if key.startswith("_") or key not in parameters:
                continue
            default = parameters[key].default
            if default is inspect.Parameter.empty or default is None:
                continue
            value = setting(config, raw)
            if value is not None and not same(value, default):
                found.append(f"{where} ({target}): {key} = {value!r} in the config, {default!r} in the code")
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_no_code_default_contradicts_the_value_its_config_passes(stack):
    assert disagreements(STACKS[stack]) == []


def test_the_check_sees_a_contradicting_default(tmp_path, monkeypatch):
    summary = {"_target_": "bundle.trust.transforms.TrustSummaryd", "keys": "pred", "passes": "@uncertainty"}
    monkeypatch.setattr(config_stacks, "CONFIGS", tmp_path)
    (tmp_path / "c.json").write_text(json.dumps({"uncertainty": 0, "summary": summary}))
    assert disagreements(["c.json"]) == []  # the same as the code's default
    (tmp_path / "c.json").write_text(json.dumps({"uncertainty": 8, "summary": summary}))
    assert disagreements(["c.json"]) == [
        "summary (bundle.trust.transforms.TrustSummaryd): passes = 8 in the config, 0 in the code"
    ]
    summary["passes"] = 8  # written in the component itself: a per-use choice, not a setting
    (tmp_path / "c.json").write_text(json.dumps({"summary": summary}))
    assert disagreements(["c.json"]) == []
