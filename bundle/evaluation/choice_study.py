"""How often the operator estimator is sure and wrong, and what it costs, with and without the output's veto.

Run on tuning volumes only (never a scan that is evaluated): each volume is degraded every way of the evaluation,
super-resolved once, and the consistency step of `consistency_operator: auto` is applied as inference applies it.
For every LR the study records the truth, the CNN's k-space-or-blur estimate, the output's own verdict
(`with_output_evidence`), and the PSNR gain over cubic B-spline of: the network's SR, the output the step delivers
(`bundle.trust.consistency.auto_weights`: k-space truncation and the blur the output names, each by its share and
where it explains the output) and the output of the 0.6.1 rule (projection with every sure estimate, mixture of the
unsure ones).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass

import torch

from bundle.core.metrics import psnr_from_mse
from bundle.data.datalist import iter_hr_volumes
from bundle.data.degradation import evaluation_lr, evaluation_operator
from bundle.evaluation.protocol import upsample_baseline
from bundle.trust.consistency import consistent_output

__all__ = ["ChoiceRow", "operator_choice_study", "summarise_choices", "choice_table"]

# evaluation degradations that no projection operator models, and what they are (k-space against blur)
UNMODELLED_TRUTH = {"kspace_hamming": "kspace"}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChoiceRow:
    case: str
    degradation: str
    truth: str  # "kspace" or the blur that made the LR; "kspace" for every k-space LR, filtered or not
    estimated: str
    probability: float
    sure: bool
    relative_residual: float  # RMS(D(SR) - LR) / the LR's detail under the estimated operator
    agrees: bool  # the estimated operator explains the output (relative residual within EXPLAINED_RESIDUAL)
    gain_sr: float  # network's SR - cubic B-spline, dB
    gain_delivered: float  # what the step delivers now
    gain_without_veto: float  # what it delivered before the output could veto a projection

    @property
    def sure_and_wrong(self) -> bool:
        """Sure of the other side of k-space-or-blur than the truth; a filtered k-space LR (no operator models it)
        taken for a blur is not counted."""
        if self.degradation == "kspace_hamming":
            return False
        return self.sure and (self.estimated == "kspace") != (self.truth == "kspace")


def _psnr(pred: torch.Tensor, hr: torch.Tensor) -> float:
    return float(psnr_from_mse(((pred.float() - hr.float()) ** 2).mean()))


def _without_veto(sr: torch.Tensor, lr: torch.Tensor, scale, estimate) -> torch.Tensor:
    """The output of the rule before the veto: project with a sure estimate, mix the projections of an unsure one."""
    if estimate.sure:
        return consistent_output(sr, lr, scale, estimate.operator)
    terms = [p * consistent_output(sr, lr, scale, op) for op, p in estimate.probabilities.items() if p != 0]
    return sum(terms[1:], terms[0])


def operator_choice_study(evaluation, degradations: tuple[str, ...]) -> list[ChoiceRow]:
    """One ChoiceRow per volume x degradation of `evaluation` (a built SREvaluation whose consistency step is
    "project" with operator "auto" and an estimator)."""
    evaluation.runner.load()
    step = evaluation.consistency
    rows = []
    for case, hr in iter_hr_volumes(evaluation.transform, evaluation.datalist):
        hr = torch.as_tensor(hr).float()
        for degradation in degradations:
            lr = evaluation_lr(hr[0], evaluation.scale, degradation, case)[None]
            sr = evaluation.super_resolve(lr).cpu()
            result = step(sr, lr)
            estimate = result.estimate
            if estimate is None:
                raise ValueError("the study needs consistency project with operator auto and an operator estimator")
            base = _psnr(upsample_baseline(lr, evaluation.scale, "bspline"), hr)
            truth = evaluation_operator(degradation) or UNMODELLED_TRUTH.get(degradation)
            if truth is None:
                raise ValueError(f"{degradation}: no operator made it that the study can name as the truth")
            row = ChoiceRow(
                case=case,
                degradation=degradation,
                truth=truth,
                estimated=estimate.operator,
                probability=estimate.probability,
                sure=estimate.sure,
                relative_residual=float((estimate.relative_residuals or {}).get(estimate.operator, 0.0)),
                agrees=bool(estimate.agrees),
                gain_sr=_psnr(sr, hr) - base,
                gain_delivered=_psnr(result.output, hr) - base,
                gain_without_veto=_psnr(_without_veto(sr, lr, evaluation.scale, estimate), hr) - base,
            )
            logger.info(
                "%s %s: estimated %s (%.2f%s), relative residual %.2f; gain %+.2f dB delivered, %+.2f without the veto",
                case,
                degradation,
                row.estimated,
                row.probability,
                ", sure" if row.sure else "",
                row.relative_residual,
                row.gain_delivered,
                row.gain_without_veto,
            )
            rows.append(row)
    return rows


def summarise_choices(rows: list[ChoiceRow]) -> dict:
    """Counts (sure and wrong, disagreements, disagreements where the CNN was right) and the mean and worst gains
    of the SR, the delivered output and the output without the veto."""
    if not rows:
        raise ValueError("the operator-choice study scored no LR volume (an empty datalist?)")
    out: dict = {
        "lr_volumes": len(rows),
        "sure_and_wrong": sum(r.sure_and_wrong for r in rows),
        "disagreements": sum(not r.agrees for r in rows),
        "disagreements_where_the_cnn_was_right": sum(
            (not r.agrees) and (r.estimated == "kspace") == (r.truth == "kspace") for r in rows
        ),
        "rows": [asdict(r) for r in rows],
    }
    for key in ("gain_sr", "gain_delivered", "gain_without_veto"):
        values = [getattr(r, key) for r in rows]
        out[key] = {"mean": statistics.fmean(values), "worst": min(values)}
    return out


def choice_table(summary: dict) -> str:
    """Markdown: the counts, then one row per LR."""
    lines = [
        f"{summary['lr_volumes']} LR volumes; sure and wrong (k-space against blur): {summary['sure_and_wrong']}; "
        f"the estimated operator does not explain the output: {summary['disagreements']} (of which the CNN was right: "
        f"{summary['disagreements_where_the_cnn_was_right']}).",
        "",
        "| gain over cubic B-spline (dB) | mean | worst |",
        "|---|---|---|",
    ]
    names = {
        "gain_sr": "network's SR",
        "gain_delivered": "delivered",
        "gain_without_veto": "every sure estimate projected",
    }
    for key, name in names.items():
        lines.append(f"| {name} | {summary[key]['mean']:+.2f} | {summary[key]['worst']:+.2f} |")
    lines += [
        "",
        "| case | degradation | truth | estimated | p | sure | residual / LR detail | explains | SR | delivered "
        "| every sure estimate projected |",
        "|---" * 11 + "|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['case']} | {r['degradation']} | {r['truth']} | {r['estimated']} | {r['probability']:.2f} | "
            f"{'yes' if r['sure'] else 'no'} | {r['relative_residual']:.2f} | {'yes' if r['agrees'] else '**no**'} | "
            f"{r['gain_sr']:+.2f} | {r['gain_delivered']:+.2f} | {r['gain_without_veto']:+.2f} |"
        )
    return "\n".join(lines) + "\n"
