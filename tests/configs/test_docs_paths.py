"""Every repository path, `make` target and `--config_file` that README.md and docs/*.md name exists.

Paths are the ones under the repository's own folders (`bundle/`, `configs/`, `scripts/`, `tests/`, `docs/`,
`models/release/`) and relative Markdown links; what runs write (`outputs/`, `data/`, `dist/`, the rest of `models/`)
is not checked, nor a path inside another one (`$B/configs/...`, `dist/<name>/configs/...`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ROOTS = ("bundle/", "configs/", "scripts/", "tests/", "docs/", "models/release/")
# a repository path: starts a token (not inside another path such as dist/x/configs/...), made of path characters
PATH = re.compile(r"(?<![\w./$<>-])((?:" + "|".join(map(re.escape, ROOTS)) + r")[\w./-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAKE = re.compile(r"(?:`|^[ \t]*)make ([a-z][\w-]*)", re.M)
CONFIG_FILE = re.compile(r"--config_file\s+(\"[^\"]*\"|'[^']*'|\S+)")
TARGET = re.compile(r"^([\w-]+):", re.M)


def make_targets(root: Path = ROOT) -> set[str]:
    return set(TARGET.findall((root / "Makefile").read_text()))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a Markdown page's headings: lower case, punctuation dropped, spaces as '-'."""
    titles = re.findall(r"^#+\s+(.*?)\s*$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", t.lower()).replace(" ", "-") for t in titles}


def missing_references(text: str, page: Path, root: Path = ROOT) -> list[str]:
    """What `text` (the content of `page`) names that does not exist under `root`, one entry per problem."""
    problems = []
    for path in PATH.findall(text):
        path = path.split("::")[0].rstrip(".,:;")
        if not (root / path).exists():
            problems.append(f"path {path}")
    for link in LINK.findall(text):
        target = link.split("#")[0]
        if not target or "://" in target or target.startswith("mailto:"):
            continue
        if not (page.parent / target).exists():
            problems.append(f"link {link}")
        elif "#" in link and target.endswith(".md") and link.split("#")[1] not in anchors(page.parent / target):
            problems.append(f"anchor {link}")
    targets = make_targets(root)
    problems += [f"make {name}" for name in MAKE.findall(text) if name not in targets]
    for value in CONFIG_FILE.findall(text):
        for name in re.findall(r"[\w./-]+\.json", value):
            if name.startswith(ROOTS) and not (root / name).exists():  # dist/..., $B/...: written by runs
                problems.append(f"--config_file {name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_target_and_config_a_page_names_exists(page):
    assert missing_references(page.read_text(), page) == []


def test_the_check_finds_a_made_up_path_target_config_and_link():
    made_up = (
        "See `bundle/no_such_stage/module.py` and [the page](no_such_page.md), run `make no-such-target`, then\n"
        "read [the part](docs/usage.md#no-such-section)\n"
        "python -m monai.bundle run inference --config_file \"['configs/inference.json','configs/nope.json']\"\n"
        "make also-missing\n"
    )
    assert missing_references(made_up, ROOT / "README.md") == [
        "path bundle/no_such_stage/module.py",
        "path configs/nope.json",
        "link no_such_page.md",
        "anchor docs/usage.md#no-such-section",
        "make no-such-target",
        "make also-missing",
        "--config_file configs/nope.json",
    ]


def test_real_paths_outputs_and_prose_are_not_reported():
    fine = (
        "`bundle/config_check.py`, tests/configs/test_docs_paths.py::test_x, `configs/demo.json`, (docs/usage.md),\n"
        "outputs/eval/summary.json, dist/mri_sr_demo/configs/inference.json, $B/configs/metadata.json, `make demo`,\n"
        "`make test`; we make sure of it. [web](https://monai.io), [usage](docs/usage.md#thick-slice-scans-"
        "without-training-data-per-scan-adaptation)\n"
        "--config_file dist/mri_sr_demo/configs/inference.json\n"
    )
    assert missing_references(fine, ROOT / "README.md") == []
