"""Atomic file replacement: a path always holds either its old content or the complete new one.

Every file the bundle writes (checkpoints, model.pt, SR outputs, reports, manifests, calibrations) goes through
`replace_atomically`: a temporary file in the same folder, flushed and fsynced, renamed over the target (atomic
on POSIX and Windows), then the folder fsynced. On any error the temporary file is removed and the target is
untouched, so a killed run never leaves a truncated file for the next one to trip over. A full disk (or quota)
is one line, `DiskFullError`, naming the file being written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from bundle.core.errors import DiskFullError

__all__ = ["replace_atomically", "write_text_atomic", "fsync_dir"]

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
        if err.errno in DISK_FULL:
            raise DiskFullError(
                f"{path}: {err.strerror or 'no space left'} while writing it; nothing half-written was left. "
                "Free space there or choose another folder"
            ) from None
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
