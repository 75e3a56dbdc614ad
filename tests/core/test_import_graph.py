"""The package's import graph: no cycle, no stage importing a higher one, inference free of the training stage.

The graph is read from the source (every `import` / `from ... import`, function-level ones included), so a lazy
import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[2] / "bundle"

# a stage may import its own package and lower ranks only; training and inference are side by side
RANKS = {
    "core": 0,
    "data": 1,
    "training": 2,
    "inference": 2,
    "trust": 3,
    "evaluation": 4,
    "adaptation": 4,
    "config_check": 5,
    "export": 6,  # the exported bundle folder: builds on every stage, like scripts/
}
HEAVY = ("torchvision", "lpips")  # what an exported inference bundle must not need from this package


def module_name(path: Path) -> str:
    parts = path.relative_to(BUNDLE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module name `path` imports (absolute names; relative imports resolved)."""
    names: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


@functools.cache
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in BUNDLE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bundle"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_finds_a_hand_made_cycle_and_none_in_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_resolve_relative_and_function_level(tmp_path):
    assert "bundle.core.errors" in imports_of(BUNDLE / "data" / "datalist.py")


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_stage_is_ranked():
    assert {stage(m) for m in graph()} <= set(RANKS) | {"bundle"}


@pytest.mark.parametrize("module", sorted(graph()))
def test_no_lower_stage_imports_a_higher_one(module):
    edges = graph()
    if stage(module) == "bundle":
        return
    for target in edges[module]:
        if stage(target) == "bundle" or stage(target) == stage(module):
            continue
        assert RANKS[stage(target)] < RANKS[stage(module)], f"{module} (a {stage(module)} module) imports {target}"


def closure(edges: dict[str, set[str]], roots: list[str]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


def test_inference_and_its_checks_never_reach_training_or_heavy_packages():
    """What inference.json and the exported bundle build (inference, trust transforms, config checks) needs no
    module of the training stage, and none of ours imports torchvision or lpips on its way."""
    edges = graph()
    roots = [m for m in edges if stage(m) in ("inference", "trust")] + ["bundle.config_check"]
    reached = closure(edges, roots)
    assert not [m for m in reached if stage(m) == "training"]
    paths = {module_name(p): p for p in BUNDLE.rglob("*.py")}
    for module in reached:
        heavy = [m for m in imports_of(paths[module]) if m.split(".")[0] in HEAVY]
        assert not heavy, f"{module} imports {heavy}"
