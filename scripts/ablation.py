"""The reference study's three studies through the same bundle configs: slices per plane, RRDB blocks, LR patch size.

    python scripts/ablation.py --scale demo --output_dir outputs/ablation     # 2 CPU cores, demo data
    python scripts/ablation.py --scale full --dataset_dir /data/Task01_BrainTumour --output_dir outputs/ablation

Each variant trains with `monai.bundle run training` and is scored with `monai.bundle run evaluating`
(MSE, PSNR, SSIM, LPIPS where ImageNet weights exist). Writes results.json, a table in the reference study's style
(results.md) and a plot of quality against training time (quality_vs_time.png). Variants already
finished (their summary.json exists) are not run again, so an interrupted study resumes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]

SCALES = {
    # demo: the demo configs; the patch study shrinks the demo LR patch as the reference study shrank 30x30x20
    "demo": {
        "configs": ["configs/train.json", "configs/demo.json"],
        "eval_configs": ["configs/train.json", "configs/evaluate.json", "configs/demo.json"],
        "base": {"max_epochs": 6},
        "slices": [0, 4, "all"],
        "blocks": [1, 2, 3],
        "patches": [[12, 12, 8], [10, 10, 6], [8, 8, 5]],
    },
    # full: the reference study's settings on MSD Task01 (GPU)
    "full": {
        "configs": ["configs/train.json"],
        "eval_configs": ["configs/train.json", "configs/evaluate.json"],
        "base": {"max_epochs": 200},
        "slices": [0, 10, "all"],
        "blocks": [5, 10, 15],
        "patches": [[30, 30, 20], [24, 24, 16], [20, 20, 12]],
    },
}


def variants(scale: str) -> dict[str, dict]:
    s = SCALES[scale]
    out = {}
    for k in s["slices"]:
        out[f"slices={k}"] = {"slices_per_plane": k}
    for b in s["blocks"]:
        out[f"blocks={b}"] = {"num_blocks": b}
    for patch in s["patches"]:
        out[f"lr_patch={'x'.join(map(str, patch))}"] = {"lr_patch_size": patch}
    return out


def _cli(overrides: dict) -> list[str]:
    args = []
    for k, v in overrides.items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    return args


def _run(args: list[str], log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=ROOT, env=env, stdout=f, stderr=f)
    if proc.returncode != 0:
        raise SystemExit(f"error: variant failed, see {log}")


def ablation(scale: str = "demo", output_dir: str = "outputs/ablation", dataset_dir: str | None = None) -> None:
    if scale not in SCALES:
        raise SystemExit(f"error: scale must be one of {list(SCALES)}")
    s = SCALES[scale]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = ["--dataset_dir", dataset_dir] if dataset_dir else []
    results = {}
    todo = variants(scale)
    for i, (name, overrides) in enumerate(todo.items(), 1):
        vdir = out / name.replace("=", "_")
        summary = vdir / "eval" / "summary.json"
        if not summary.is_file():
            vdir.mkdir(exist_ok=True)
            print(f"[{i}/{len(todo)}] {name}: training", flush=True)
            common = _cli({**s["base"], **overrides}) + data + ["--ckpt_dir", str(vdir / "models")]
            t0 = time.perf_counter()
            _run(["run", "training", "--config_file", str(s["configs"]), *common, "--output_dir", str(vdir),
                  "--resume", "False"], vdir / "train.log")  # fmt: skip
            (vdir / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}")
            print(f"[{i}/{len(todo)}] {name}: evaluating", flush=True)
            _run(["run", "evaluating", "--config_file", str(s["eval_configs"]), *common,
                  "--ckpt_path", str(vdir / "models" / "model.pt"), "--output_dir", str(vdir / "eval")],
                 vdir / "eval.log")  # fmt: skip
        epochs = list(csv.DictReader(open(vdir / "train_log.csv")))
        sr = json.loads(summary.read_text())["methods"]["sr"]
        results[name] = {
            **{m: sr[m]["mean"] for m in ("mse", "psnr", "ssim", "lpips") if m in sr},
            "s_per_epoch": sum(float(r["seconds"]) for r in epochs) / len(epochs),
            "total_s": float((vdir / "train_seconds.txt").read_text()),
        }
    (out / "results.json").write_text(json.dumps(results, indent=4))
    lines = ["| variant | MSE | PSNR | SSIM | LPIPS | s/epoch | total s |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lpips = f"{r['lpips']:.4f}" if "lpips" in r else "missing"
        lines.append(f"| {name} | {r['mse']:.6f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {lpips} | "
                     f"{r['s_per_epoch']:.1f} | {r['total_s']:.0f} |")  # fmt: skip
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results, out / "quality_vs_time.png")


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.scatter(r["total_s"], r["psnr"])
        ax.annotate(name, (r["total_s"], r["psnr"]), fontsize=7)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("quality against training time")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path}")


if __name__ == "__main__":
    fire.Fire(ablation)
