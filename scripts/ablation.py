"""The reference study's three studies through the same bundle configs: slices per plane, RRDB blocks, LR patch size.

    python scripts/ablation.py --scale demo --output_dir outputs/ablation     # 2 CPU cores, demo data
    python scripts/ablation.py --scale full --dataset_dir /data/Task01_BrainTumour --output_dir outputs/ablation
    python scripts/ablation.py --scale demo --repeats 3     # seeds 0, 1, 2: mean ± sd and error bars
    python scripts/ablation.py --scale demo --repeats 3 --studies slices \
        --warm_start "outputs/release_training/acquired/models/checkpoint_epoch=190.pt" --warm_epochs 2

Each variant trains with `monai.bundle run training` and is scored with `monai.bundle run evaluating`
(MSE, PSNR, SSIM, LPIPS with the ImageNet AlexNet of `make weights`); the perceptual term uses the ImageNet VGG19
of `make weights` up to conv5_4, as the reference study. Quality is judged as in `make demo`: the SR's gain over
cubic B-spline (PSNR dB, SSIM, LPIPS; mean over the test volumes and degradations), the interpolation a user would
pick instead of the model. Cost is seconds per training step and the training process's peak resident memory.
`--warm_start <checkpoint>` starts every variant of the same architecture from that checkpoint and trains
`--warm_epochs` more epochs (the fine-tuning the perceptual release model gets, as ESRGAN fine-tunes its PSNR
model); the blocks study always starts from scratch (its networks differ). Writes results.json, a table in the
reference study's style (results.md) and a plot of the PSNR gain over cubic B-spline against training time, with
LPIPS against step time beside it (quality_vs_time.png). Variants already
finished (their summary.json exists) are not run again, so an interrupted study resumes. Each variant and seed
has its own folder, `<variant>/seed_<n>`; the seed reaches the run as the config's `seed` (`--seed`).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire
import torch

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("mse", "psnr", "ssim", "lpips")
# the quality axis: the SR's pooled mean minus cubic B-spline's (`bundle.evaluation.protocol`'s headline)
GAINS = ("psnr_gain_bspline", "ssim_gain_bspline", "lpips_gain_bspline")
COSTS = ("s_per_epoch", "s_per_step", "peak_mb", "total_s")
REAL_FEATURES = {"vgg_weights": "imagenet", "perceptual_layer": "conv5_4"}  # the reference study's VGG19 features
QUALITY_LABEL = "PSNR gain over cubic B-spline (dB)"

SCALES = {
    # demo: the demo configs; the patch study shrinks the demo LR patch as the reference study shrank 30x30x20
    "demo": {
        "configs": ["configs/train.json", "configs/demo.json"],
        "eval_configs": ["configs/train.json", "configs/evaluate.json", "configs/demo.json"],
        "base": {"max_epochs": 6, "ood_shifts": [], **REAL_FEATURES},  # no out-of-distribution study per variant
        "slices": [0, 1, 5, 10, 20, "all"],
        "blocks": [1, 2, 3],
        "patches": [[12, 12, 8], [10, 10, 6], [8, 8, 5]],
    },
    # full: the reference study's settings on MSD Task01 (GPU)
    "full": {
        "configs": ["configs/train.json"],
        "eval_configs": ["configs/train.json", "configs/evaluate.json"],
        "base": {"max_epochs": 200, **REAL_FEATURES},
        "slices": [0, 1, 5, 10, 20, "all"],
        "blocks": [5, 10, 15],
        "patches": [[30, 30, 20], [24, 24, 16], [20, 20, 12]],
    },
}


STUDIES = ("slices", "blocks", "patches")


def variants(scale: str | dict, studies: tuple[str, ...] = STUDIES) -> dict[str, dict]:
    s = SCALES[scale] if isinstance(scale, str) else scale
    out = {}
    for k in s["slices"] if "slices" in studies else []:
        out[f"slices={k}"] = {"slices_per_plane": k}
    for b in s["blocks"] if "blocks" in studies else []:
        out[f"blocks={b}"] = {"num_blocks": b}
    for patch in s["patches"] if "patches" in studies else []:
        out[f"lr_patch={'x'.join(map(str, patch))}"] = {"lr_patch_size": patch}
    return out


def _cli(overrides: dict) -> list[str]:
    args = []
    for k, v in overrides.items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    return args


def _run(args: list[str], log: Path) -> float:
    """Run one bundle command; its peak resident memory in MB (from the kernel's accounting of that process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "monai.bundle", *args], cwd=ROOT, env=env, stdout=f, stderr=f)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: variant failed, see {log}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def _warm_start(vdir: Path, checkpoint: Path, epochs: int) -> dict:
    """Put `checkpoint` where the variant's training resumes from; the overrides that train `epochs` more."""
    import re

    found = re.search(r"checkpoint_epoch=(\d+)\.pt$", checkpoint.name)
    if not checkpoint.is_file() or not found:
        raise SystemExit(f"error: --warm_start {checkpoint}: not a training checkpoint (checkpoint_epoch=<n>.pt)")
    (vdir / "models").mkdir(parents=True, exist_ok=True)
    start = vdir / "models" / checkpoint.name
    if not start.exists():
        # a deliberate change of configuration (data, loss): the start point carries no run record, so the resume
        # takes its weights, optimiser state and counters without comparing configurations
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state.pop("run_record", None)
        torch.save(state, start)
    return {"max_epochs": int(found.group(1)) + int(epochs), "resume": True}


def _trained_model(models: Path, fine_tuned: bool) -> Path:
    """The model a variant is judged by: the best-validation model.pt of a training from scratch; the last epoch's
    checkpoint of a fine-tuning (as the release models are published), whose validation best may predate it."""
    if not fine_tuned:
        return models / "model.pt"
    return max(models.glob("checkpoint_epoch=*.pt"), key=lambda p: int(p.stem.split("=")[1]))


def _run_variant(
    s: dict,
    name: str,
    overrides: dict,
    seed: int,
    vdir: Path,
    data: list[str],
    tag: str,
    warm: dict | None = None,
    eval_extra: list[str] | None = None,
) -> dict:
    """Train and evaluate one variant with one seed in `vdir` (skipped when its summary.json exists); its scores.

    warm: {"checkpoint": path, "epochs": n} to fine-tune from a checkpoint instead of training from scratch.
    """
    summary = vdir / "eval" / "summary.json"
    if not summary.is_file():
        vdir.mkdir(parents=True, exist_ok=True)
        print(f"{tag} {name}, seed {seed}: training", flush=True)
        start = _warm_start(vdir, Path(warm["checkpoint"]), warm["epochs"]) if warm else {"resume": False}
        settings, where = {**s["base"], **overrides, "seed": seed}, data + ["--ckpt_dir", str(vdir / "models")]
        common, train = _cli(settings) + where, _cli({**settings, **start}) + where  # start: one value per id
        t0 = time.perf_counter()
        peak = _run(["run", "training", "--config_file", str(s["configs"]), *train, "--output_dir", str(vdir)],
                    vdir / "train.log")  # fmt: skip
        (vdir / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}")
        (vdir / "train_peak_mb.txt").write_text(f"{peak:.0f}")
        print(f"{tag} {name}, seed {seed}: evaluating", flush=True)
        _run(["run", "evaluating", "--config_file", str(s["eval_configs"]), *common,
              "--ckpt_path", str(_trained_model(vdir / "models", warm is not None)), "--output_dir", str(vdir / "eval"),
              *(eval_extra or [])],
             vdir / "eval.log")  # fmt: skip
    with open(vdir / "train_log.csv", newline="") as f:
        epochs = [r for r in csv.DictReader(f) if r.get("seconds")]
    methods = json.loads(summary.read_text())["methods"]
    sr, bspline = methods["sr"], methods.get("bspline")
    if bspline is None or "psnr" not in bspline or "psnr" not in sr:
        raise SystemExit(f"error: {summary}: no SR or cubic B-spline PSNR to take the gain from (evaluate with the "
                         "'bspline' baseline; delete the folder to run the variant again)")  # fmt: skip
    return {
        "seed": seed,
        **{m: sr[m]["mean"] for m in METRICS if m in sr},
        **{
            f"{m}_gain_bspline": sr[m]["mean"] - bspline[m]["mean"]
            for m in ("psnr", "ssim", "lpips")
            if m in sr and m in bspline
        },
        "s_per_epoch": sum(float(r["seconds"]) for r in epochs) / len(epochs),
        **_per_step(epochs),
        **({"peak_mb": float(peak_file.read_text())} if (peak_file := vdir / "train_peak_mb.txt").is_file() else {}),
        "total_s": float((vdir / "train_seconds.txt").read_text()),
    }


def _per_step(epochs: list[dict]) -> dict:
    """Seconds per training step over the epochs this run trained (train_log.csv's `iterations`), when logged."""
    if not epochs or not all(r.get("iterations") for r in epochs):
        return {}
    return {"s_per_step": sum(float(r["seconds"]) for r in epochs) / sum(int(r["iterations"]) for r in epochs)}


def _mean_sd(runs: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of every score (sd 0.0 for a single run)."""
    out: dict = {"seeds": [r["seed"] for r in runs], "runs": runs}
    for key in (*GAINS, *METRICS, *COSTS):
        values = [r[key] for r in runs if key in r]
        if len(values) == len(runs):
            out[key] = statistics.fmean(values)
            out[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def ablation(
    scale: str = "demo",
    output_dir: str = "outputs/ablation",
    dataset_dir: str | None = None,
    repeats: int = 1,
    seed: int = 0,
    studies: str | tuple = STUDIES,
    warm_start: str | None = None,
    warm_epochs: int = 2,
    slices: str | tuple | None = None,
    eval_uncertainty: int | None = None,
) -> None:
    """Run every variant `repeats` times with seeds `seed`, `seed`+1, ... (each in `<variant>/seed_<n>`); the
    table and plot give the mean and the standard deviation over the seeds.

    studies: which of "slices", "blocks", "patches" (comma-separated); warm_start / warm_epochs: see the module;
    slices: the slice counts of the slices study (e.g. "0,10,all"; default the scale's), in the order given;
    eval_uncertainty: test-time passes of the evaluations (the config's when None); the scores are the single
    network pass's either way (no variant has a calibration), so 0 only saves time."""
    if scale not in SCALES:
        raise SystemExit(f"error: scale must be one of {list(SCALES)}")
    chosen = tuple(studies.split(",")) if isinstance(studies, str) else tuple(studies)
    if not chosen or any(st not in STUDIES for st in chosen):
        raise SystemExit(f"error: --studies must name some of {', '.join(STUDIES)}, got {studies!r}")
    if int(repeats) < 1:
        raise SystemExit(f"error: --repeats must be 1 or more, got {repeats}")
    s = SCALES[scale]
    if slices is not None:
        chosen_slices = slices.split(",") if isinstance(slices, str) else list(slices)
        s = dict(s, slices=[k if k == "all" else int(k) for k in map(str, chosen_slices)])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = ["--dataset_dir", dataset_dir] if dataset_dir else []
    seeds = [int(seed) + r for r in range(int(repeats))]
    results = {}
    todo = variants(s, chosen)
    for i, (name, overrides) in enumerate(todo.items(), 1):
        warm = (
            {"checkpoint": warm_start, "epochs": warm_epochs} if warm_start and "num_blocks" not in overrides else None
        )
        runs = [
            _run_variant(
                s,
                name,
                overrides,
                sd,
                out / name.replace("=", "_") / f"seed_{sd}",
                data,
                f"[{i}/{len(todo)}]",
                warm,
                [] if eval_uncertainty is None else ["--uncertainty", str(int(eval_uncertainty))],
            )
            for sd in seeds
        ]
        results[name] = _mean_sd(runs)
    (out / "results.json").write_text(json.dumps(results, indent=4))
    pm = "mean ± sd over seeds " + ", ".join(map(str, seeds)) if len(seeds) > 1 else f"seed {seeds[0]}"
    lines = [
        f"{pm}",
        "",
        "| variant | **PSNR gain over cubic B-spline (dB)** | SSIM gain over cubic B-spline | MSE | PSNR | SSIM "
        "| LPIPS | LPIPS - cubic B-spline's | s/epoch | total s | s/step | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lpips = _pm(r, "lpips", 4) if "lpips" in r else "missing"
        lpips_gain = _pm(r, "lpips_gain_bspline", 4, "+") if "lpips_gain_bspline" in r else "missing"
        step = _pm(r, "s_per_step", 2) if "s_per_step" in r else "-"
        peak = _pm(r, "peak_mb", 0) if "peak_mb" in r else "-"
        lines.append(f"| {name} | **{_pm(r, 'psnr_gain_bspline', 2, '+')}** | {_pm(r, 'ssim_gain_bspline', 4, '+')} | "
                     f"{_pm(r, 'mse', 6)} | {_pm(r, 'psnr', 2)} | {_pm(r, 'ssim', 4)} | {lpips} | {lpips_gain} | "
                     f"{_pm(r, 's_per_epoch', 1)} | {_pm(r, 'total_s', 0)} | {step} | {peak} |")  # fmt: skip
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results, out / "quality_vs_time.png", len(seeds))


def _pm(r: dict, key: str, digits: int, sign: str = "") -> str:
    """`mean` or `mean ± sd` (when the variant ran with more than one seed); `sign` "+" writes the mean's sign."""
    if len(r["seeds"]) < 2:
        return f"{r[key]:{sign}.{digits}f}"
    return f"{r[key]:{sign}.{digits}f} ± {r[key + '_sd']:.{digits}f}"


MARKERS = {"slices": "o", "blocks": "s", "lr_patch": "^"}  # one marker shape per study


def _plot(results: dict, path: Path, repeats: int = 1) -> None:
    """The PSNR gain over cubic B-spline against training time, one point per variant with error bars (sd over
    seeds) in both directions; a dashed line at 0 is B-spline itself. Studies differ by marker shape, variants by
    colour, and a legend beside the axes names them, so no label is printed over another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_lpips = all("lpips" in r for r in results.values()) and all("s_per_step" in r for r in results.values())
    fig, axes = plt.subplots(1, 2 if with_lpips else 1, figsize=(13 if with_lpips else 7.5, 4), squeeze=False)
    ax = axes[0][0]
    colours = plt.get_cmap("tab10")
    for k, (name, r) in enumerate(results.items()):
        study = name.split("=")[0]
        ax.errorbar(r["total_s"], r["psnr_gain_bspline"], xerr=r.get("total_s_sd", 0.0),
                    yerr=r.get("psnr_gain_bspline_sd", 0.0),
                    marker=MARKERS.get(study, "D"), markersize=7, linestyle="none", capsize=3,
                    color=colours(k % 10), label=name)  # fmt: skip
    ax.set_xlabel("training time (s)")
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1, label="cubic B-spline")
    ax.set_ylabel(QUALITY_LABEL)
    bars = f"error bars: sd over {repeats} seeds" if repeats > 1 else "one seed, no error bars"
    ax.set_title(f"SR gain over cubic B-spline against training time ({bars})", fontsize=10)
    if with_lpips:  # the reference study's axes: LPIPS (lower is better) against the cost of a step
        lp = axes[0][1]
        for k, (name, r) in enumerate(results.items()):
            lp.errorbar(r["s_per_step"], r["lpips"], xerr=r.get("s_per_step_sd", 0.0), yerr=r.get("lpips_sd", 0.0),
                        marker=MARKERS.get(name.split("=")[0], "D"), markersize=7, linestyle="none", capsize=3,
                        color=colours(k % 10))  # fmt: skip
        lp.set_xlabel("seconds per training step")
        lp.set_ylabel("LPIPS (AlexNet, 2.5-D; lower is better)")
        lp.set_title("LPIPS against step time", fontsize=10)
    axes[0][-1].legend(*ax.get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5),
                       title="variant", title_fontsize=8)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    fire.Fire(ablation)
