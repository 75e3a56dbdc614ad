"""Output file names for inference that never clash, never overwrite a foreign file, never feed on themselves.

MONAI's SaveImaged names an output after its input's stem, so `case.mha` and `case.nii.gz` both write
`case_sr.nii.gz`, an input called `scan_sr.nii.gz` is overwritten by the output of `scan.nii.gz`, and with
the output folder as input folder a rerun super-resolves its own outputs. Here the outputs are planned
before any volume is inferred:

- `<output_dir>/.sr_outputs.json` (the manifest) records every output this bundle wrote, as
  {output file name: {"input": input path, "complete": bool}}; an input file that the manifest of its own
  folder records as an output (and whose name ends with an output suffix) is skipped. A file of the same
  name that the manifest does not know is a real input.
- Inputs with the same stem get the format in their names (`case_mha_sr.nii.gz`, `case_nii_sr.nii.gz`),
  only when stems collide.
- An existing output file may only be replaced by a rerun for the same input; any other existing file stops
  the run with one line naming both files.

`OutputPlan` does this for inference.json (its `items` feed the datalist); `bundle.inference.writer.SaveSROutputsd`
writes each input's files under its planned name and records them in the manifest, pending then complete.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.core.atomic import write_text_atomic
from bundle.core.errors import OutputError
from bundle.data.datalist import split_image_suffix

__all__ = [
    "OUTPUT_SUFFIXES",
    "MANIFEST_NAME",
    "check_writable",
    "read_manifest",
    "record_outputs",
    "plan_outputs",
    "OutputPlan",
]

logger = logging.getLogger(__name__)

# every file name ending this bundle's inference writes per volume; the first is the SR volume itself
OUTPUT_SUFFIXES = ("_sr.nii.gz", "_consistency.nii.gz", "_uncertainty.nii.gz", "_sr.json")
MANIFEST_NAME = ".sr_outputs.json"
OUTPUT_ADVICE = "move it away or choose another --output_dir"


def check_writable(output_dir: str | os.PathLike) -> Path:
    """Prove `output_dir` writable before anything is inferred, leaving nothing behind.

    A temporary file is written and removed in the folder, or, while it does not exist yet, in its nearest
    existing parent: the folder itself is made at the first write, so a run that fails earlier (a bad input,
    a checkpoint that does not fit) leaves no empty output folder.
    """
    folder = Path(output_dir)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, "not a directory", str(probe))
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".write_test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise OutputError(
            f"{folder}: cannot write output there ({err.strerror or err}); choose another --output_dir"
        ) from None
    return folder


def _manifest_path(folder: Path) -> Path:
    return folder / MANIFEST_NAME


def read_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """{output file name: {"input": path, "complete": bool}} recorded in `folder`, {} if there is none."""
    path = _manifest_path(Path(folder))
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
        outputs = content["outputs"]
        if not isinstance(outputs, dict) or not all(isinstance(v, dict) and "input" in v for v in outputs.values()):
            raise ValueError("unexpected layout")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise OutputError(
            f"{path}: unreadable record of earlier outputs ({err}); delete it if the folder holds none of them"
        ) from None
    return outputs


def record_outputs(
    output_dir: str | os.PathLike, names: Sequence[str], source: str, complete: bool, forget: Sequence[str] = ()
) -> None:
    """Record the files `names` in `output_dir` as outputs of the input `source`, and drop the entries `forget`
    (files that were planned but not written); rewrites the manifest atomically. Entries whose files no longer
    exist are dropped, so the manifest lists only files that exist."""
    folder = Path(output_dir)
    outputs = read_manifest(folder)
    for name in [n for n in outputs if not ((folder / n).exists() or (folder / n).is_symlink())]:
        outputs.pop(name)  # a file that is gone (an earlier rewrite failed on a full disk) is listed no longer
    for name in forget:
        outputs.pop(name, None)
    for name in names:
        outputs[name] = {"input": str(source), "complete": bool(complete)}
    text = json.dumps({"version": 1, "outputs": dict(sorted(outputs.items()))}, indent=4)
    path = _manifest_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def _resolved(path: str | os.PathLike) -> str:
    return str(Path(path).resolve())


def _stem_and_suffix(path: Path) -> tuple[str, str]:
    """("case", ".nii.gz") for case.nii.gz; (folder name, "") for a DICOM series folder."""
    return (path.name, "") if path.is_dir() else split_image_suffix(path.name)


def _format_tag(suffix: str, full: bool) -> str:
    if not suffix:
        return "dicom"
    tag = suffix.lower().lstrip(".")
    if not full and tag.endswith(".gz"):
        tag = tag[: -len(".gz")]
    return tag.replace(".", "_")


def input_label(item: Mapping[str, Any], image_key: str = "image") -> str:
    """The input as messages name it: its path, or for a DICOM series its folder and series (number, description,
    UID); never the internal `<folder>/<series name>` key of `_input_path`, which is no file."""
    image = item[image_key]
    if isinstance(image, (list, tuple)):
        return f"{Path(image[0]).parent}, {item.get('series_label') or 'DICOM series ' + str(item.get('name', ''))}"
    return str(image)


def _input_path(item: Mapping[str, Any], image_key: str) -> Path:
    """The input's path; for a DICOM series given as its file list, `<folder>/<series name>` (one per series)."""
    image = item[image_key]
    if isinstance(image, (list, tuple)):
        return Path(image[0]).parent / str(item.get("name") or Path(image[0]).parent.name)
    return Path(image)


def _is_own_output(path: Path, manifests: dict[Path, dict[str, dict]], suffixes: Sequence[str]) -> bool:
    """True if `path` is recorded as an output in the manifest of its own folder and named like one."""
    if not path.name.endswith(tuple(suffixes)):
        return False
    folder = path.parent.resolve()
    if folder not in manifests:
        manifests[folder] = read_manifest(folder)
    return path.name in manifests[folder]


def _output_names(paths: list[Path]) -> list[str]:
    """One output name per input: its stem, plus its format where stems collide (case-insensitively)."""
    parts = [_stem_and_suffix(p) for p in paths]
    groups: dict[str, list[int]] = {}
    for i, (stem, _) in enumerate(parts):
        groups.setdefault(stem.casefold(), []).append(i)
    names = [stem for stem, _ in parts]
    for members in groups.values():
        if len(members) < 2:
            continue
        short = [_format_tag(parts[i][1], full=False) for i in members]
        full = len(set(short)) < len(short)  # case.nii and case.nii.gz: keep the .gz apart
        for i in members:
            names[i] = f"{parts[i][0]}_{_format_tag(parts[i][1], full=full)}"
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        j = seen.setdefault(name.casefold(), i)
        if j != i:
            raise OutputError(
                f"{paths[i]}: would write the same output name {name!r} as {paths[j]}; rename one of them"
            )
    return names


def plan_outputs(
    items: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    suffixes: Sequence[str] = OUTPUT_SUFFIXES[:1],
    image_key: str = "image",
) -> list[dict]:
    """Plan every input's output names before anything is inferred.

    Args:
        items: datalist items with `image_key` = input path (a file or a DICOM series folder).
        output_dir: where the outputs go.
        suffixes: the file endings this run writes per input, the SR volume's first ("_sr.nii.gz").

    Returns:
        The items that are real inputs, each a copy with "source" (the input path; for a DICOM series an internal
        `<folder>/<series name>` key), "source_label" (how messages name the input, `input_label`), "output_name"
        (the stem every output file starts with) and "output" (the path of the first suffix's file). Inputs that
        are this bundle's own recorded outputs are left out (logged).

    Raises:
        OutputError: two inputs would share an output, or an output would replace a file that is not this
            input's own earlier output; the line names both files.
    """
    folder = Path(output_dir)
    known = tuple(dict.fromkeys([*suffixes, *OUTPUT_SUFFIXES]))
    manifests: dict[Path, dict[str, dict]] = {}
    inputs = []
    for item in items:
        path = _input_path(item, image_key)
        if _is_own_output(path, manifests, known):
            logger.info("%s: skipped, an output of an earlier run", path)
            continue
        inputs.append(item)
    paths = [_input_path(item, image_key) for item in inputs]
    names = _output_names(paths)
    folder_key = folder.resolve()
    recorded = manifests[folder_key] if folder_key in manifests else read_manifest(folder)
    planned = []
    for item, path, name in zip(inputs, paths, names, strict=True):
        for suffix in suffixes:
            out = folder / f"{name}{suffix}"
            if out.exists() or out.is_symlink():
                entry = recorded.get(out.name)
                if entry is None or _resolved(entry["input"]) != _resolved(path):
                    label = input_label(item, image_key)
                    raise OutputError(f"{out}: exists and is not an earlier output of {label}; {OUTPUT_ADVICE}")
        output = str(folder / (name + suffixes[0]))
        label = input_label(item, image_key)
        planned.append({**item, "source": str(path), "source_label": label, "output_name": name, "output": output})
    return planned


class OutputPlan:
    """The planned outputs of one inference run: the output folder (proved writable first) and the items.

    Args:
        items: inputs ("image" = input path or a DICOM series' files), from `bundle.data.datalist.inference_datalist`.
        output_dir: the output folder.
        suffixes: file endings written per input (`bundle.inference.writer.output_suffixes`), the SR volume's first.

    `items` are the inputs to run, each with "source" and "output_name" for `bundle.inference.writer.SaveSROutputsd`.
    """

    def __init__(
        self,
        items: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike,
        suffixes: Sequence[str] = OUTPUT_SUFFIXES[:1],
    ) -> None:
        self.output_dir, self.suffixes = check_writable(output_dir), tuple(suffixes)  # before anything is read
        self.items = plan_outputs(items, self.output_dir, self.suffixes)
        logger.info("%d input(s) planned into %s", len(self.items), self.output_dir)
