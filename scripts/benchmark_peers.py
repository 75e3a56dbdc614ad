"""Thick-slice MRI super-resolution, peers side by side (`bundle.evaluation.peers`): the command line.

    python scripts/benchmark_peers.py thick  --scans_dir data/real_scans_all --output_dir outputs/peers
    python scripts/benchmark_peers.py run    --output_dir outputs/peers --methods bspline,trilinear,eclare,saint,soupgan,adapt \\
        --budget_minutes 10 --settings gaussian_x4
    python scripts/benchmark_peers.py report --output_dir outputs/peers

Besides wiring the steps, it adds method "adapt", the bundle's own per-scan self-supervised workflow: the
evaluation stage may not import the adaptation stage (which prior it warm-starts from), this command line may.
"""

from __future__ import annotations

import functools
import shlex
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
from bundle.evaluation.peers.interpolation import interpolate  # noqa: E402
from bundle.evaluation.peers.report import report  # noqa: E402

# the bundle's own per-scan self-supervised workflow; {python} {input} {output_dir} {minutes} {profile} are filled in
ADAPT_COMMAND = (
    "{python} -m monai.bundle run adapting --config_file \"['configs/inference.json','configs/adapt.json']\" "
    "--input_image {input} --output_dir {output_dir} --max_minutes {minutes} --slice_profile {profile}"
)
ADAPT_CONFIG = ROOT / "configs" / "adapt.json"
ADAPT_PRIORS = ROOT / "models" / "adapt_priors"  # `make priors`; the workflow's `warm_start: auto` looks here


def plan_adapt(case: Case, work: Path, budget_s: float) -> Plan:
    out = work / "thick_sr.nii.gz"
    if not ADAPT_CONFIG.is_file():
        return Plan(None, out, unavailable="not available on this checkout (configs/adapt.json missing)")
    cmd = ADAPT_COMMAND.format(
        python=shlex.quote(sys.executable),
        input=shlex.quote(str(case.thick)),
        output_dir=shlex.quote(str(work)),
        minutes=f"{max(budget_s / 60.0 - 1, 1):g}",
        profile=case.profile,  # the simulated acquisition's profile, as ECLARE is given it
    )
    # the prior the workflow's `warm_start: auto` takes: of the profile and the integer factor it upsamples by
    prior = find_prior(ADAPT_PRIORS, find_geometry([1.0, 1.0, case.factor], profile=case.profile))
    note = f"warm start: {prior.relative_to(ROOT)}" if prior else "from scratch (no prior: `make priors`)"
    return Plan(cmd, out, cwd=ROOT, note=note)


PLANNERS["adapt"] = plan_adapt


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
