"""Benchmarks: SRGANTrainer step, the perceptual term alone, and full-volume inference.

    python scripts/benchmark.py all --preset cpu_small --output_dir bench
    python scripts/benchmark.py train_step --preset reference --device cuda --amp True

The presets, what each times and how: bundle/evaluation/benchmark.py. Results go to <output_dir>/<name>.json and .md.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.evaluation.benchmark import COMMANDS  # noqa: E402


def _cli(fn):
    """Run a benchmark from the command line; results are already printed and written, so return nothing."""

    @functools.wraps(fn)  # keeps the signature, so fire still lists the flags
    def run(*args, **kwargs) -> None:
        fn(*args, **kwargs)

    return run


def main() -> None:
    fire.Fire({name: _cli(fn) for name, fn in COMMANDS.items()})


if __name__ == "__main__":
    main()
