"""3D super-resolution bundle: RRDB-GAN generator, random-slice perceptual loss, MONAI engines, trust layer.

Stage packages, in data-flow order: `core` (shared by all), `data`, `training`, `inference`, `trust`,
`evaluation`; `config_check` checks every config id before anything is built.
"""

import json
from pathlib import Path


def _version() -> str:
    """The bundle's one version: configs/metadata.json beside this package (also in an exported bundle)."""
    try:
        return str(
            json.loads((Path(__file__).resolve().parents[1] / "configs" / "metadata.json").read_text())["version"]
        )
    except (OSError, ValueError, KeyError):
        return "unknown"


__version__ = _version()
