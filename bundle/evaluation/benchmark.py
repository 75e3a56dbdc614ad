"""Benchmarks: SRGANTrainer step, the perceptual term alone, and full-volume inference.

    python scripts/benchmark.py all --preset cpu_small --output_dir bench   # the command line
    python scripts/benchmark.py train_step --preset reference --device cuda --amp True

Each benchmark warms up, times `repeats` runs and reports medians; ratios between variants come from the
same run. Results go to <output_dir>/<name>.json and .md. Peak memory is measured on CUDA only.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import resource
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from bundle.core.networks import Discriminator3D, RRDBNet3D
from bundle.core.timing import call_seconds
from bundle.data.degradation import RandomDegradationd, SimulateLowResolutiond
from bundle.data.transforms import RandPairedCropSamplesd
from bundle.inference.generator import make_inferer
from bundle.training.losses import ContentLoss, GANObjective, RandomSlicePerceptualLoss, vgg19_features
from bundle.training.trainer import Precision, SRGANTrainer

ROOT = Path(__file__).resolve().parents[2]


def _tiny_preset() -> dict:
    """The tests' smoke preset, sized by the configs/tiny.json overlay the tests use for every config."""
    tiny = json.loads((ROOT / "configs" / "tiny.json").read_text())
    return dict(lr_patch=tuple(tiny["lr_patch_size"]), batch=1, blocks=tiny["num_blocks"], features=tiny["features"],
                growth=tiny["growth"], d_features=tiny["d_features"], layer=tiny["perceptual_layer"],
                infer_lr=(8, 8, 6), infer_roi=(6, 6, 4), repeats=1)  # fmt: skip


PRESETS = {
    # seconds-long smoke run for the tests
    "tiny": _tiny_preset(),
    # small enough for `make bench` on 2 CPU cores
    "cpu_small": dict(lr_patch=(12, 12, 8), batch=4, blocks=2, features=16, growth=8, d_features=16, layer="conv5_4",
                      infer_lr=(24, 24, 16), infer_roi=(12, 12, 8), repeats=3),
    # the reference study's patch size and model (8 patches of 120x120x80 per step on a GPU)
    "reference": dict(lr_patch=(30, 30, 20), batch=8, blocks=10, features=64, growth=32, d_features=64,
                      layer="conv5_4", infer_lr=(60, 60, 39), infer_roi=(32, 32, 20), repeats=10),
    # the reference study's model and patch size, one patch per step: its ratio on a CPU (minutes per step)
    "reference_cpu": dict(lr_patch=(30, 30, 20), batch=1, blocks=10, features=64, growth=32, d_features=64,
                          layer="conv5_4", infer_lr=(60, 60, 39), infer_roi=(32, 32, 20), repeats=1),
    # the reference study's patch size with one patch and a small generator: the perceptual share on a CPU
    "reference_patch_cpu": dict(lr_patch=(30, 30, 20), batch=1, blocks=2, features=16, growth=8, d_features=16,
                                layer="conv5_4", infer_lr=(60, 60, 39), infer_roi=(32, 32, 20), repeats=3),
}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = call_seconds(fn, repeats, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"median_s": statistics.median(times), "times_s": times, "peak_mem_mib": peak}


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _write(output_dir: str, name: str, result: dict, lines: list[str]) -> dict:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=4))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def slice_variants(full: int, which: str | tuple = "0,10,all") -> dict[str, int | str]:
    """Slices-per-plane variants by name: "0" (off), any count ("1", "5", "10", "20"), "all"."""
    items = which if isinstance(which, (list, tuple)) else str(which).split(",")  # fire turns "0,10" into (0, 10)
    names = [str(w).strip() for w in items if str(w).strip()]
    if not names or "0" not in names or any(n != "all" and not (n.isdigit() and int(n) >= 0) for n in names):
        raise ValueError(f"variants must be slice counts or 'all' and include 0, got {which!r}")
    out: dict[str, int | str] = {}
    for n in names:
        if n == "all":
            out[f"all ({full})"] = "all"
        else:
            out["0 (off)" if n == "0" else f"{n} / plane"] = int(n)
    return out


def _train_step_variant(p: dict, k: int | str, device: str, amp: bool, repeats: int) -> dict:
    """One variant, meant to run in its own process so that its peak memory is its own."""
    dev = torch.device(device)
    torch.manual_seed(0)
    lr = torch.rand(p["batch"], 1, *p["lr_patch"], device=dev)
    hr = torch.rand(p["batch"], 1, *[4 * n for n in p["lr_patch"]], device=dev)
    g = RRDBNet3D(features=p["features"], growth=p["growth"], num_blocks=p["blocks"]).to(dev)
    d = Discriminator3D(features=p["d_features"]).to(dev)
    perceptual = RandomSlicePerceptualLoss(k, layer=p["layer"], weights="random").to(dev)
    trainer = SRGANTrainer(dev, 1, [None], g, torch.optim.Adam(g.parameters()), d, torch.optim.Adam(d.parameters()),
                           GANObjective(ContentLoss(perceptual)), Precision(amp=amp))  # fmt: skip
    batch = {"lr": lr, "image": hr}
    result = _time(lambda: trainer._iteration(trainer, batch), dev, repeats)
    if dev.type == "cpu":  # peak resident memory of this process (Linux reports KiB)
        result["peak_mem_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def train_step(preset: str = "cpu_small", device: str = "cpu", amp: bool = False, repeats: int | None = None,
               output_dir: str = "bench", variants: str = "0,10,all") -> dict:  # fmt: skip
    """Median seconds per SRGANTrainer iteration and peak memory for 0, 10 and all slices per plane.

    Each variant runs in a fresh process, so peak memory (CUDA allocator, or resident set on CPU) is its own.
    """
    p = PRESETS[preset]
    dev = torch.device(device)
    repeats = repeats or p["repeats"]
    hr_size = [4 * n for n in p["lr_patch"]]
    results = {}
    ctx = multiprocessing.get_context("spawn")
    for label, k in slice_variants(sum(hr_size), variants).items():
        with ctx.Pool(1) as pool:
            results[label] = pool.apply(_train_step_variant, (p, k, device, amp, repeats))
    base = results["0 (off)"]
    lines = [
        f"## train_step ({preset}): {p['batch']} x HR {hr_size}, {p['blocks']} RRDB blocks, "
        f"{p['features']} features, VGG19 to {p['layer']}, amp={amp}",
        f"Machine: {_machine(dev)}; median of {repeats} after 1 warm-up; each variant in its own process.",
        f"Peak ratios are against the {'10-slice' if '10 / plane' in results else 'no-perceptual'} step.",
        "",
        "| slices per plane | s / step | x no-perceptual | patches / s | peak MiB | peak ratio |",
        "|---|---|---|---|---|---|",
    ]
    ten = results.get("10 / plane", base)["peak_mem_mib"]
    for label, r in results.items():
        r["ratio_vs_off"] = r["median_s"] / base["median_s"]
        peak = r["peak_mem_mib"]
        lines.append(f"| {label} | {r['median_s']:.3f} | {r['ratio_vs_off']:.2f} | {p['batch'] / r['median_s']:.2f} | "
                     f"{peak:.0f} | {peak / ten:.2f} |")  # fmt: skip
    if dev.type == "cpu":
        lines += ["", "Peak memory on CPU is the process's peak resident set (model, data and Python included)."]
    return _write(output_dir, f"train_step_{preset}", {"preset": p, "machine": _machine(dev), **results}, lines)


def _monai_perceptual(k: int, n_min: int, dev: torch.device):
    """MONAI's PerceptualLoss at ~k slices per axis, with random VGG16 weights planted in a temporary hub cache
    (it always loads ImageNet weights; offline this is the only way to build it)."""
    import torchvision
    from monai.losses import PerceptualLoss

    hub = Path(tempfile.mkdtemp()) / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.vgg16().state_dict(), hub / "checkpoints" / "vgg16-397923af.pth")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        return PerceptualLoss(spatial_dims=3, network_type="vgg", is_fake_3d=True, fake_3d_ratio=k / n_min).to(dev)
    finally:
        torch.hub.set_dir(old)


def perceptual(preset: str = "cpu_small", device: str = "cpu", slices: int = 10, repeats: int | None = None,
               output_dir: str = "bench") -> dict:  # fmt: skip
    """The perceptual term alone (forward + backward): ours, the bare VGG floor, variants, MONAI's."""
    p = PRESETS[preset]
    dev = torch.device(device)
    repeats = repeats or p["repeats"]
    hr_size = [4 * n for n in p["lr_patch"]]
    fake = torch.rand(p["batch"], 1, *hr_size, device=dev, requires_grad=True)
    real = torch.rand(p["batch"], 1, *hr_size, device=dev)
    torch.manual_seed(0)
    ours = RandomSlicePerceptualLoss(slices, layer=p["layer"], weights="random", seed=0).to(dev)
    folded = RandomSlicePerceptualLoss(slices, layer=p["layer"], weights="random", seed=0, fold_input_conv=True)
    folded = folded.to(dev)
    vgg = vgg19_features(p["layer"], "random")[0].to(dev)
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    idx = {ax: torch.randperm(n)[:slices].to(dev) for ax, n in zip((2, 3, 4), hr_size, strict=True)}

    def floor():
        """The method's bare minimum: VGG on the same number of slices, real under no_grad, nothing else."""
        total = 0
        for ax, i in idx.items():
            f = fake.index_select(ax, i).movedim(ax, 1).flatten(0, 1)
            r = real.index_select(ax, i).movedim(ax, 1).flatten(0, 1)
            with torch.no_grad():
                rf = vgg((r.expand(-1, 3, -1, -1) - mean) / std)
            total = total + F.l1_loss(vgg((f.expand(-1, 3, -1, -1) - mean) / std), rf)
        (total / 3).backward()

    def run(loss):
        return lambda: loss(fake, real).backward()

    results = {
        "floor (bare VGG, same slices)": _time(floor, dev, repeats),
        "RandomSlicePerceptualLoss": _time(run(ours), dev, repeats),
        "RandomSlicePerceptualLoss, folded first conv": _time(run(folded), dev, repeats),
    }
    try:
        monai_loss = _monai_perceptual(slices, min(hr_size), dev)
        results["MONAI PerceptualLoss (LPIPS-VGG16, fake 3D)"] = _time(run(monai_loss), dev, repeats)
    except Exception as err:  # report, do not hide
        results["MONAI PerceptualLoss (LPIPS-VGG16, fake 3D)"] = {"error": str(err)[:200]}
    floor_s = results["floor (bare VGG, same slices)"]["median_s"]
    lines = [
        f"## perceptual ({preset}): {p['batch']} x HR {hr_size}, {slices} slices per plane, VGG19 to {p['layer']}",
        f"Machine: {_machine(dev)}; forward + backward, median of {repeats} after 1 warm-up.",
        "",
        "| variant | s | x floor |",
        "|---|---|---|",
    ]
    for label, r in results.items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | |")
            continue
        r["ratio_vs_floor"] = r["median_s"] / floor_s
        lines.append(f"| {label} | {r['median_s']:.4f} | {r['ratio_vs_floor']:.2f} |")
    lines += [
        "",
        "MONAI's loss differs: LPIPS on VGG16 (five layers, learned channel weights), slices drawn by ratio of the",
        "smallest axis per axis, each axis copied whole first. It is a timing reference, not the same loss.",
    ]
    return _write(output_dir, f"perceptual_{preset}", {"preset": p, "machine": _machine(dev), **results}, lines)


def inference(preset: str = "cpu_small", device: str = "cpu", amp: bool = False, repeats: int | None = None,
              output_dir: str = "bench") -> dict:  # fmt: skip
    """Seconds and peak memory per full volume: whole-volume vs sliding-window inference."""
    p = PRESETS[preset]
    dev = torch.device(device)
    repeats = repeats or max(1, p["repeats"] // 2)
    net = RRDBNet3D(features=p["features"], growth=p["growth"], num_blocks=p["blocks"]).to(dev).eval()
    lr = torch.rand(1, 1, *p["infer_lr"], device=dev)
    results = {}
    for label, inferer in (("whole volume", make_inferer(False, None)),
                           (f"sliding window {list(p['infer_roi'])}", make_inferer(True, p["infer_roi"]))):  # fmt: skip

        def step(inf=inferer):
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
                inf(lr, net)

        results[label] = _time(step, dev, repeats)
    lines = [
        f"## inference ({preset}): LR {list(p['infer_lr'])} -> SR {[4 * n for n in p['infer_lr']]}, "
        f"{p['blocks']} blocks, {p['features']} features, amp={amp}",
        f"Machine: {_machine(dev)}; median of {repeats} after 1 warm-up.",
        "",
        "| mode | s / volume | peak MiB |",
        "|---|---|---|",
    ]
    for label, r in results.items():
        peak = f"{r['peak_mem_mib']:.0f}" if r["peak_mem_mib"] is not None else "n/a"
        lines.append(f"| {label} | {r['median_s']:.3f} | {peak} |")
    return _write(output_dir, f"inference_{preset}", {"preset": p, "machine": _machine(dev), **results}, lines)


def data(volume: tuple = (240, 240, 160), lr_patch: tuple = (30, 30, 20), patches: int = 8, repeats: int = 5,
         threads: int = 1, output_dir: str = "bench") -> dict:  # fmt: skip
    """Patches per second the training data pipeline yields after the cache, per worker: a fixed degradation
    (the LR is cached, only the paired crops run per epoch) against `lr_method: random` (each volume is
    degraded afresh every epoch, then cropped). `threads` = torch threads, as in one DataLoader worker."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    hr = F.avg_pool3d(torch.rand(1, 1, *volume, generator=gen), 5, 1, 2)[0]  # smooth, like anatomy
    crop = RandPairedCropSamplesd(lr_roi_size=lr_patch, scale=4, num_samples=patches)
    cached = SimulateLowResolutiond(scale=4, method="kspace")({"image": hr})
    degradation = RandomDegradationd(scale=4, method="random")
    degradation.set_random_state(0)
    variants = {
        "fixed (cached LR, crops only)": lambda: crop(cached),
        "random (degrade + crops)": lambda: crop(degradation({"image": hr})),
    }
    dev = torch.device("cpu")
    results = {name: _time(fn, dev, repeats) for name, fn in variants.items()}
    for r in results.values():
        r["patches_per_s"] = patches / r["median_s"]
    lines = [
        f"## data pipeline: HR volume {list(volume)}, {patches} patch pairs of LR {list(lr_patch)} per volume",
        f"Machine: {_machine(dev)} ({threads} torch thread(s), as one DataLoader worker); median of {repeats}.",
        "",
        "| variant | s / volume | patches / s per worker |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {r['median_s']:.3f} | {r['patches_per_s']:.1f} |" for name, r in results.items()]
    return _write(output_dir, "data_pipeline", {"machine": _machine(dev), **results}, lines)


def all(
    preset: str = "cpu_small", device: str = "cpu", amp: bool = False, output_dir: str = "bench"
) -> None:  # noqa: A001
    """Every benchmark with one preset."""
    train_step(preset, device, amp, output_dir=output_dir)
    perceptual(preset, device, output_dir=output_dir)
    inference(preset, device, amp, output_dir=output_dir)


COMMANDS = {"train_step": train_step, "perceptual": perceptual, "inference": inference, "data": data, "all": all}
