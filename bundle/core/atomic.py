"""Atomic file replacement: a path always holds either its old content or the complete new one.

Every file the bundle writes (checkpoints, model.pt, SR outputs, reports, manifests, calibrations) goes through
`replace_atomically`: a temporary file in the same folder, flushed and fsynced, renamed over the target (atomic
on POSIX and Windows), then the folder fsynced. Folders written as a whole (a DICOM series, an exported bundle)
go through `replace_dir_atomically` in the same way. On any error the temporary file is removed and the target is
untouched, so a killed run never leaves a truncated file for the next one to trip over. A full disk (or quota)
is one line, `DiskFullError`, naming the file being written.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from bundle.core.errors import DiskFullError

__all__ = [
    "replace_atomically",
    "replace_dir_atomically",
    "write_text_atomic",
    "fsync_dir",
    "remove_path",
    "remove_partial_outputs",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _raise_disk_full(err: OSError, path: Path) -> None:
    """A full disk (or quota) while writing `path` as one `DiskFullError` line; other errors pass."""
    if err.errno in DISK_FULL:
        raise DiskFullError(
            f"{path}: {err.strerror or 'no space left'} while writing it; nothing half-written was left. "
            "Free space there or choose another folder"
        ) from None


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """The permissions an ordinary new file gets (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def replace_atomically(path: str | os.PathLike, write: Callable[[str], None], keep_suffix: bool = False) -> Path:
    """Call `write(temporary path)`, then put that file in place of `path` atomically; returns `path`.

    keep_suffix: end the temporary name with `path`'s suffixes, for writers that choose the format by it
    (nibabel, matplotlib). The folder must exist.
    """
    path = Path(path)
    suffix = ".tmp" + ("".join(path.suffixes) if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, _default_mode())
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        _raise_disk_full(err, path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    return replace_atomically(path, write)


def replace_dir_atomically(path: str | os.PathLike, fill: Callable[[Path], T]) -> T:
    """Call `fill(temporary folder)`, then put that folder in place of the folder `path` as a whole; returns what
    `fill` returned.

    The temporary folder is a hidden sibling (`.<name>.<random>.partial`, readable by others as a shared output
    should be); its files are fsynced, an existing `path` is swapped out and removed only once the new folder is
    in place. On any error the temporary folder is removed and an existing `path` is left (or put back) as it
    was, so a reader never sees a half-written folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    old = path.with_name(f".{path.name}.{tmp.name.rsplit('.', 2)[-2]}.old")
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        result = fill(tmp)
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        for folder in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
            fsync_dir(folder)
        fsync_dir(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        _restore(tmp, old, path)
        _raise_disk_full(err, path)
        raise
    except BaseException:
        _restore(tmp, old, path)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()
    return result


def remove_path(path: Path) -> bool:
    """Remove a file, a link or a folder (a DICOM series) at `path`; False when nothing was there. OSError
    propagates."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return True
    if path.exists() or path.is_symlink():
        path.unlink()
        return True
    return False


def remove_partial_outputs(paths: Iterable[Path]) -> None:
    """After a failed write: remove each of `paths` that is there; one warning per path that cannot be removed."""
    for path in paths:
        try:
            remove_path(path)
        except OSError as err:
            logger.warning("%s: could not remove this partial output (%s)", path, err.strerror or err)


def _restore(tmp: Path, old: Path, path: Path) -> None:
    """After a failed `replace_dir_atomically`: no temporary folder, and the previous folder back in place."""
    shutil.rmtree(tmp, ignore_errors=True)
    if old.exists() and not path.exists():
        os.replace(old, path)
