"""Datalists (MSD Task01 layout for training/evaluation, input files for inference) and a cache dataset, with clear
errors."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, load_decathlon_datalist

from bundle.core.errors import DatasetError, root_cause

__all__ = [
    "msd_datalist",
    "split_datalist",
    "inference_datalist",
    "split_image_suffix",
    "case_name",
    "transform_or_error",
    "iter_hr_volumes",
    "download_msd_task01",
    "CheckedCacheDataset",
]

logger = logging.getLogger(__name__)

MSD_TASK01 = "Task01_BrainTumour"
MSD_HINT = (
    "Expected the Medical Segmentation Decathlon layout: <dataset_dir>/dataset.json, imagesTr/, imagesTs/. "
    "Get MSD Task01 BrainTumour from http://medicaldecathlon.com (CC-BY-SA 4.0), or run "
    "`python scripts/download_msd.py --root_dir DIR` to download it with monai.apps, "
    "or `python scripts/make_demo_data.py` for a small demo dataset in the same layout."
)
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".ima", "")


def msd_datalist(dataset_dir: str | os.PathLike, section: str = "training") -> list[dict]:
    """Items {"image": path, ...} of one section ("training" or "test") of an MSD `dataset.json`.

    Every listed image must exist; the message names the first missing one.
    """
    root = Path(dataset_dir)
    meta = root / "dataset.json"
    if not meta.is_file():
        raise DatasetError(f"{meta}: not found. {MSD_HINT}")
    try:
        with open(meta) as f:
            content = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{meta}: not valid JSON ({err}). {MSD_HINT}") from None
    if section not in content or not content[section]:
        raise DatasetError(f"{meta}: has no {section!r} entries. {MSD_HINT}")
    items = load_decathlon_datalist(str(meta), is_segmentation=True, data_list_key=section, base_dir=str(root))
    for item in items:
        if not Path(item["image"]).exists():
            raise DatasetError(f"{item['image']}: listed in {meta} under {section!r} but missing. {MSD_HINT}")
    return items


def split_datalist(items: list[dict], num_val: int, part: str) -> list[dict]:
    """Deterministic train/validation split: the last `num_val` items validate, the rest train."""
    if part not in ("train", "val"):
        raise ValueError(f"part must be 'train' or 'val', got {part!r}")
    if not 0 < num_val < len(items):
        folders = [str(Path(item["image"][0] if isinstance(item["image"], list) else item["image"]).parent)
                   for item in items if isinstance(item, dict) and "image" in item]  # fmt: skip
        where = f" of {os.path.commonpath(folders)}" if folders else ""
        raise DatasetError(
            f"num_val: cannot hold out {num_val} validation case(s) from the {len(items)} training case(s){where}; "
            f"set --num_val between 1 and {len(items) - 1}"
            if len(items) > 1
            else f"num_val: the dataset{where} has {len(items)} training case(s); at least 2 are needed"
        )
    return items[:-num_val] if part == "train" else items[-num_val:]


def download_msd_task01(root_dir: str | os.PathLike) -> Path:
    """Download and extract MSD Task01 BrainTumour (about 7 GB) with monai.apps; returns the dataset folder."""
    from monai.apps import download_and_extract
    from monai.apps.datasets import DecathlonDataset

    root = Path(root_dir)
    target = root / MSD_TASK01
    if (target / "dataset.json").is_file():
        logger.info("%s already present", target)
        return target
    root.mkdir(parents=True, exist_ok=True)
    url = DecathlonDataset.resource[MSD_TASK01]
    md5 = DecathlonDataset.md5[MSD_TASK01]
    download_and_extract(url=url, filepath=str(root / f"{MSD_TASK01}.tar"), output_dir=str(root), hash_val=md5)
    return target


def _is_dicom_dir(path: Path) -> bool:
    files = [p for p in path.iterdir() if p.is_file()]
    return bool(files) and all(p.suffix.lower() in DICOM_SUFFIXES for p in files)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def split_image_suffix(name: str) -> tuple[str, str]:
    """("case", ".nii.gz") for "case.nii.gz" (the longest image suffix, any case); (name, "") for none."""
    lower = name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


def case_name(item: dict) -> str:
    """A datalist item's case name: its image file's name without the image suffix ("sub-01.run1" for
    ".../sub-01.run1.nii.gz"). Evaluation rows, figures, reader-study files and the noisy LR's seed use it."""
    return split_image_suffix(Path(str(item["image"])).name)[0]


def inference_datalist(input_dir: str | os.PathLike) -> list[dict]:
    """Items {"image": path, "name": case name} for a file, a DICOM-series folder, or a folder of them.

    NIfTI, NRRD, MHA/MHD files and DICOM series (a folder of .dcm files) are accepted. A DICOM folder gives one
    item per series ({"image": [its files, sorted along the slice normal], "name", "series_uid"}).
    """
    root = Path(input_dir)
    if not root.exists():
        raise DatasetError(f"{root}: input not found")

    def item(path: Path) -> dict:
        return {"image": str(path), "name": split_image_suffix(path.name)[0]}

    if root.is_file():
        if not _is_image_file(root):
            raise DatasetError(f"{root}: not a supported image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
        return [item(root)]
    from bundle.data.dicom_series import dicom_series_items  # pydicom only when a folder is listed

    if _is_dicom_dir(root):
        return dicom_series_items(root)  # one item per series, each checked for missing or uneven slices
    items = []
    for p in sorted(root.iterdir()):
        if _is_image_file(p):
            items.append(item(p))
        elif p.is_dir() and _is_dicom_dir(p):
            items.extend(dicom_series_items(p))
    if not items:
        raise DatasetError(f"{root}: no images found (NIfTI, NRRD, MHA/MHD files or DICOM series folders)")
    return items


class _CacheItemError(Exception):
    """One cache item failed; carries its one-line message out of a ThreadPool worker (which forwards only
    Exception subclasses: a SystemExit raised there would end the worker thread and leave the pool waiting)."""


def _item_message(item: dict, index: int, err: BaseException) -> str:
    """One line naming the item's file (the root cause's own message usually does) and the problem."""
    root = root_cause(err)
    message = " ".join(str(root).split()) or type(root).__name__
    source = item.get("image") if isinstance(item, dict) else None
    source = source[0] if isinstance(source, (list, tuple)) and source else source
    name = str(source) if isinstance(source, (str, os.PathLike)) else f"data item {index}"
    return message if name in message else f"{name}: {message}"


def transform_or_error(transform: Callable[[dict], Any], item: dict, index: int = 0) -> Any:
    """`transform(item)`, or one `DatasetError` line naming the item's file and the root cause: for the
    volumes evaluation and calibration load one by one, outside any dataset."""
    try:
        return transform(dict(item))
    except Exception as err:
        raise DatasetError(_item_message(item, index, err)) from None


def iter_hr_volumes(transform: Callable[[dict], Any], datalist: list[dict]) -> Iterator[tuple[str, torch.Tensor]]:
    """(case name, HR (1, C, X, Y, Z) float32) for every item, loaded one at a time (`transform_or_error`), so that
    a study of many large volumes holds one of them at a time."""
    for index, item in enumerate(datalist):
        yield case_name(item), torch.as_tensor(transform_or_error(transform, item, index)["image"]).float()[None]


class CheckedCacheDataset(CacheDataset):
    """A `monai.data.CacheDataset` whose cache filling stops with one `DatasetError` line naming the bad file.

    A transform that fails while the cache is filled (e.g. `bundle.data.transforms.CheckVolumed` on a volume with NaN
    values) would otherwise reach the user as MONAI's nested "applying transform" and "Failed to instantiate"
    tracebacks. The cache is filled in a ThreadPool (`num_workers` threads), so each item's failure travels as a
    private Exception and becomes the `DatasetError` (a SystemExit) in the calling thread. Items beyond
    `cache_rate` and the random transforms run later, in DataLoader workers, with their errors unchanged.
    """

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except (Exception, SystemExit) as err:  # SystemExit: a transform may raise DatasetError itself
            raise _CacheItemError(_item_message(self.data[idx], idx, err)) from err

    def _fill_cache(self, indices=None) -> list:
        try:
            return super()._fill_cache(indices)
        except _CacheItemError as err:
            raise DatasetError(str(err)) from None
