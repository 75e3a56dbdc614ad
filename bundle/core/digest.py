"""The sha256 of a file, the fingerprint that large_files.yml, the release tooling and the calibration record keep
of a model file, so that one model (or operator estimator) is told from another."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of the file's bytes, read in 1 MiB blocks (model files need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
