"""Thick-slice MRI super-resolution, peers side by side (`bundle.evaluation.peers`): the command line.

    python scripts/benchmark_peers.py thick  --scans_dir data/real_scans_all --output_dir outputs/peers \\
        [--settings gaussian_t3_x5,box_t3_x5]
    python scripts/benchmark_peers.py run    --output_dir outputs/peers --methods bspline,trilinear,eclare,saint,soupgan,adapt \\
        --budget_minutes 10 --settings gaussian_x4
    python scripts/benchmark_peers.py report --output_dir outputs/peers

Besides wiring the steps, it adds methods "adapt" (the bundle's per-scan workflow told nothing about the slice
profile) and "adapt_told" (told the true one): the evaluation stage may not import the adaptation stage (which prior
it warm-starts from), this command line may.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bundle.adaptation.geometry import find_geometry  # noqa: E402
from bundle.adaptation.prior import find_prior  # noqa: E402
from bundle.evaluation.peers.benchmark import PLANNERS, run, thick  # noqa: E402
from bundle.evaluation.peers.cases import Case, Plan  # noqa: E402
from bundle.evaluation.peers.drivers import plan_adapting  # noqa: E402
from bundle.evaluation.peers.interpolation import interpolate  # noqa: E402
from bundle.evaluation.peers.report import report  # noqa: E402

ADAPT_CONFIG = ROOT / "configs" / "adapt.json"
ADAPT_PRIORS = ROOT / "models" / "adapt_priors"  # `make priors`; the workflow's `warm_start: auto` looks here


def _prior_note(case: Case, told: bool) -> str:
    """The prior `warm_start: auto` takes: of the integer factor and the profile (told: the true one, else gaussian)."""
    prior = find_prior(
        ADAPT_PRIORS, find_geometry([1.0, 1.0, case.factor], profile=case.profile if told else "gaussian")
    )
    return f"warm start: {prior.relative_to(ROOT)}" if prior else "from scratch (no prior: `make priors`)"


def plan_adapt(case: Case, work: Path, budget_s: float) -> Plan:
    return plan_adapting(case, work, budget_s, ADAPT_CONFIG, told=False, note=_prior_note(case, told=False))


def plan_adapt_told(case: Case, work: Path, budget_s: float) -> Plan:
    return plan_adapting(case, work, budget_s, ADAPT_CONFIG, told=True, note=_prior_note(case, told=True))


PLANNERS.update(adapt=plan_adapt, adapt_told=plan_adapt_told)


def _quiet(step: Callable[..., Any]) -> Callable[..., None]:
    """The step for the command line: its progress is printed as it goes, so fire need not print what it returns."""

    @functools.wraps(step)
    def call(*args: Any, **kwargs: Any) -> None:
        step(*args, **kwargs)

    return call


if __name__ == "__main__":
    fire.Fire(
        {"thick": _quiet(thick), "run": _quiet(run), "report": _quiet(report), "interpolate": _quiet(interpolate)}
    )
