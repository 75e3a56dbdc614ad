"""`python -m monai.bundle run adapting`: one thick-slice scan in, its isotropic SR and trust outputs out.

    python -m monai.bundle run adapting --config_file "['configs/inference.json','configs/adapt.json']" \\
        --input_image scan.nii.gz (or a folder of DICOM series: --dicom_series picks one) --output_dir out --max_minutes 10

Steps: load (NIfTI, anything ITK reads, or a DICOM series) -> find the slice axis and factor (`geometry`) ->
intensities to [0, 1] by robust percentiles with inference's outlier guard
(`bundle.data.robust_intensity.robust_normalise`) -> the slice profile from the user, the header or the scan itself
(`profile`, `acquisition`) -> the predictions timed on the scan's own slabs, training gets the rest of the budget
(`budget`) -> in-plane pairs, split into training, calibration and check
images (`pairs`) -> train the generator on the training images within the budget (`fit`), starting from the
template-learnt prior of the scan's profile and factor when `make priors` has made one (`warm_start: auto`;
`prior`) -> on the held-out images: SR against the cubic B-spline start, also on pairs of the other plausible
profiles (`judge_against_bspline`: if the SR is worse it falls back to B-spline and says why) and a conformal
calibration of the TTA std (calibration images, for every plausible profile: the largest lambda) with its coverage
measured on the check images -> super-resolve
the scan across its slices, also turned about its slice axis when the time left holds it (`predict_rotations`;
`predict`, with progress and an ETA) -> inference's consistency step (`bundle.trust.consistency`: the map of the
network's output before projection, and the projection when `consistency` is "project"; the bound is calibrated on
the output as written) -> inference's non-negative rule (`bundle.trust.units.nonnegative_applies`) -> write
`<name>_sr.nii.gz`, `<name>_consistency.nii.gz`, `<name>_uncertainty.nii.gz` (the calibrated bound of the
average of orientations and turns, `bundle.trust.record.ensemble_shrink`, input units), `<name>_model.pt` (the
adapted generator's weights: the `--warm_start` of the next scan of the same protocol) and `<name>_sr.json`
atomically; the input is never overwritten and existing outputs only with `--overwrite True`. A write that fails
(a full disk) after the first output was written removes all of them, so no SR is left without its maps and the
same command can be rerun. The output folder is locked for the run (`bundle.core.locking.FolderLock`, as
inference's): a second run into it stops in one line naming the first.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from bundle.adaptation.acquisition import SliceHeader, dicom_slice_header, sidecar_slice_header
from bundle.adaptation.budget import PredictionCost, PredictionProgress, measure_prediction, training_seconds
from bundle.adaptation.fit import FitResult, fit
from bundle.adaptation.geometry import ScanGeometry, degrade_along_last, find_geometry, in_plane_images
from bundle.adaptation.pairs import InPlanePairs, SliceSplit, split_slices
from bundle.adaptation.predict import VolumePrediction, predict_slabs, predict_volume, rotation_padding
from bundle.adaptation.prior import AUTO, find_prior
from bundle.adaptation.profile import ProfileChoice, choose_profile
from bundle.adaptation.settings import (
    GeneratorSettings,
    IntensitySettings,
    OutputSettings,
    ProfileSettings,
    TrustSettings,
)
from bundle.adaptation.slab import as_slab_network
from bundle.core.atomic import remove_partial_outputs, remove_path, replace_atomically, write_text_atomic
from bundle.core.bspline import BSplineUpsample3D
from bundle.core.errors import CheckpointError, ConfigError, DatasetError, OutputError
from bundle.core.geometry import super_resolution_affine
from bundle.core.locking import FolderLock
from bundle.core.metrics import psnr, ssim_3d
from bundle.core.networks import RRDBNet3D
from bundle.data.datalist import split_image_suffix
from bundle.data.dicom_series import (
    SERIES_LABEL_KEY,
    LoadImageOrSeriesd,
    dicom_series_items,
    list_dicom_series,
    series_choice_needed,
)
from bundle.data.robust_intensity import robust_normalise
from bundle.data.transforms import check_volume
from bundle.inference.generator import check_header_size, load_generator
from bundle.inference.output_names import check_writable
from bundle.inference.writer import write_nifti_atomic
from bundle.trust.conformal import ConformalAccumulator
from bundle.trust.consistency import ConsistencyStep
from bundle.trust.record import CalibrationRecord, calibrated_uncertainty, ensemble_shrink
from bundle.trust.units import nonnegative_applies

__all__ = ["PerScanAdaptation", "judge_against_bspline", "load_scan"]

logger = logging.getLogger(__name__)


def load_scan(path: str | os.PathLike, series: Any = None) -> tuple[MetaTensor, str, bool]:
    """(volume (X, Y, Z) with its RAS affine, name, whether it is a DICOM series) from a file or a folder of
    DICOM series: its only one, or the one `series` (config id dicom_series: a SeriesNumber or SeriesInstanceUID)
    names. One DatasetError or ConfigError line otherwise (a folder of several series and no choice lists them)."""
    source = Path(path)
    if not str(path) or not source.exists():
        raise DatasetError(f"{source}: no such file or folder (--input_image)")
    loader = LoadImageOrSeriesd(keys="image", image_only=True)
    if source.is_dir():
        if series is None:
            every = list_dicom_series(source)
            if len(every) > 1:
                raise series_choice_needed(source, [s.label for s in every], "per-scan adaptation")
        items = dicom_series_items(source, series)
        if len(items) != 1:
            raise DatasetError(f"{source}: expected one DICOM series, found {len(items)}; point --input_image at one")
        item, is_dicom, name = items[0], True, str(items[0]["name"])
        logger.info("%s: DICOM %s", source, items[0][SERIES_LABEL_KEY])
    else:
        item, is_dicom, name = {"image": str(source)}, False, split_image_suffix(source.name)[0]
        check_header_size(source)  # before the reader tries to allocate what a damaged header claims
    try:
        image = loader(item)["image"]
    except Exception as err:  # noqa: BLE001 - a reader's many failure kinds become one line naming the file
        raise DatasetError(f"{source}: cannot be read as an image ({' '.join(str(err).split())[:200]})") from None
    try:  # the inference stage's own input checks (3-D, finite, not constant), so both stages refuse alike
        check_volume(image[None], name=str(source))
    except ValueError as err:
        raise DatasetError(str(err)) from None
    return image, name, is_dicom


def _add_quality(quality: dict[str, list[float]], sr: torch.Tensor, bspline: torch.Tensor, hr: torch.Tensor) -> None:
    """Append the PSNR and SSIM of the SR and of cubic B-spline against the HR, per image, to `quality`
    ({"psnr_sr", "psnr_bspline", "ssim_sr", "ssim_bspline"}: lists); tensors (n, 1, 1, Q, U)."""
    for name, out in (("sr", sr), ("bspline", bspline)):
        quality.setdefault(f"psnr_{name}", []).extend(psnr(out, hr).tolist())
        quality.setdefault(f"ssim_{name}", []).extend(ssim_3d(out, hr, win_size=7).tolist())


def _means(quality: dict[str, list[float]]) -> dict[str, float]:
    return {key: float(np.mean(values)) for key, values in quality.items()}


def _loses(scores: dict[str, Any]) -> bool:
    return scores["psnr_sr"] < scores["psnr_bspline"] or scores["ssim_sr"] < scores["ssim_bspline"]


def judge_against_bspline(held_out: dict[str, Any], others: list[dict[str, Any]], estimated: bool) -> str | None:
    """Why the adapted model must give way to cubic B-spline, or None when it may be written.

    `held_out`: PSNR / SSIM of SR and B-spline on the held-out pairs of the profile trained on; `others`: the same
    on pairs of other plausible profiles. When the profile was estimated (`estimated`), the others are its
    interval's ends and the model must win on their mean with the trained one (the gain to expect over the
    estimate's uncertainty); when it was told (user, header) and the scan disagrees, the other is the estimate,
    and the model must win there too (told and shown cannot both be trusted)."""
    if _loses(held_out):
        return (
            f"the adapted model is not better than cubic B-spline on the held-out slices (PSNR "
            f"{held_out['psnr_sr']:.2f} vs {held_out['psnr_bspline']:.2f} dB)"
        )
    if estimated and others:
        every = [held_out, *others]
        mean = {k: float(np.mean([r[k] for r in every])) for k in held_out if k.startswith(("psnr", "ssim"))}
        if _loses(mean):
            widths = ", ".join(f"{r['thickness_mm']:g}" for r in others)
            return (
                f"the adapted model is not better than cubic B-spline over the estimated profile's range (held-out "
                f"pairs at the estimate and at {widths} mm: PSNR {mean['psnr_sr']:.2f} vs {mean['psnr_bspline']:.2f} dB)"
            )
        return None
    for other in others:
        if _loses(other):
            return (
                f"the adapted model is not better than cubic B-spline on held-out slices made with the profile the "
                f"scan shows ({other['profile']}, {other['thickness_mm']:g} mm: PSNR {other['psnr_sr']:.2f} vs "
                f"{other['psnr_bspline']:.2f} dB)"
            )
    return None


class PerScanAdaptation:
    """The per-scan self-supervised workflow (see the module docstring). Config ids in configs/adapt.json."""

    def __init__(
        self,
        input_image: str,
        outputs: OutputSettings,
        dicom_series: Any = None,
        intensity: IntensitySettings | None = None,
        profile: ProfileSettings | None = None,
        generator: GeneratorSettings | None = None,
        trust: TrustSettings | None = None,
        max_minutes: float = 10.0,
        device: str | torch.device = "cpu",
    ) -> None:
        """`input_image`: a file or a folder of DICOM series (`dicom_series` picks one of several, `load_scan`);
        the groups (`bundle.adaptation.settings`, None: the group's defaults) in the order the workflow uses them;
        `max_minutes`: the whole run's budget."""
        if not max_minutes > 0:
            raise ConfigError(f"max_minutes must be > 0, got {max_minutes}")
        self.input_image, self.output_dir = str(input_image), Path(outputs.output_dir)
        self.dicom_series = dicom_series  # a folder of several DICOM series: the one to adapt to (`load_scan`)
        self.max_minutes, self.device = float(max_minutes), torch.device(device)
        self.intensity, self.profile = intensity or IntensitySettings(), profile or ProfileSettings()
        self.generator, self.trust, self.outputs = generator or GeneratorSettings(), trust or TrustSettings(), outputs
        self.input_outliers: dict[str, Any] | None = None  # what the outlier guard clipped (`_normalise`)
        self.started_from: str | None = None  # the weights the generator started from (None: from scratch)

    # -- the steps ------------------------------------------------------------------------------------------------

    def _outputs(self, name: str, is_dicom: bool) -> dict[str, Path]:
        dicom = self.outputs.output_format == "dicom"
        if dicom and not is_dicom:
            raise ConfigError(f"output_format 'dicom' needs a DICOM series as --input_image, got {self.input_image}")
        paths = {
            "sr": self.output_dir / f"{name}_sr{'' if dicom else '.nii.gz'}",
            "consistency": self.output_dir / f"{name}_consistency.nii.gz",
            "uncertainty": self.output_dir / f"{name}_uncertainty.nii.gz",
            "model": self.output_dir / f"{name}_model.pt",
            "summary": self.output_dir / f"{name}_sr.json",
        }
        source = Path(self.input_image).resolve()
        for path in paths.values():
            if path.resolve() == source:
                raise OutputError(f"{path}: is the input itself; choose another --output_dir")
            if path.exists() and not self.outputs.overwrite:
                raise OutputError(f"{path}: exists; pass --overwrite True to replace it, or another --output_dir")
        return paths

    def _network(self, geometry: ScanGeometry) -> torch.nn.Module:
        kwargs = {
            "features": 24,
            "growth": 12,
            "num_blocks": 1,
            "residual_base": "bspline",
            **(self.generator.network_kwargs or {}),
        }
        network = RRDBNet3D(scale=(1, 1, geometry.scale), **kwargs)
        if self.generator.warm_start == AUTO:
            prior = find_prior(self.generator.priors_dir, geometry)
            try:
                if prior is not None:
                    load_generator(network, prior)
                    self.started_from = str(prior)
            except CheckpointError as err:  # another size (e.g. a smaller adapt_network) or damaged: not fatal
                logger.warning("adaptation: the prior cannot start this generator, training from scratch (%s)", err)
        elif self.generator.warm_start:
            load_generator(network, self.generator.warm_start)
            self.started_from = self.generator.warm_start
        if self.started_from:
            logger.info("adaptation: the generator starts from %s", self.started_from)
        return as_slab_network(network).to(self.device)

    def _normalise(self, volume: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        """(X, Y, Z) -> (scaled so that the percentiles are 0 and 1, low, high): inference's normalisation and
        outlier guard (`robust_normalise`, unclipped); a volume that extreme values dominate is refused."""
        lower, upper = self.intensity.intensity_percentiles
        try:
            out, ranges, self.input_outliers = robust_normalise(volume[None], self.input_image, lower, upper)
        except ValueError as err:
            raise DatasetError(str(err)) from None
        lo, hi = ranges[0]
        return out[0], lo, hi

    def _consistency_step(
        self, geometry: ScanGeometry, scale3: tuple[int, int, int], fwhm_factor: float
    ) -> ConsistencyStep:
        """Inference's consistency step with the scan's slice profile as the operator (`fwhm_factor`: the
        profile's width over the scale, on the grid it is applied to: in-plane pairs or the scan's output)."""
        return ConsistencyStep(self.trust.consistency, geometry.operator, scale3, fwhm_factor=fwhm_factor)

    def _slice_header(self, image: MetaTensor, is_dicom: bool) -> SliceHeader | None:
        """SliceThickness / SpacingBetweenSlices from the DICOM series' first file or a NIfTI's BIDS sidecar."""
        if is_dicom:
            return dicom_slice_header(str(image.meta.get("filename_or_obj", "")))
        return sidecar_slice_header(self.input_image)

    def _profile(self, volume: torch.Tensor, geometry: ScanGeometry, header: SliceHeader | None) -> ProfileChoice:
        """The slice profile from the user, the header or the scan (`choose_profile`), logged with its sources."""
        choice = choose_profile(
            volume, geometry, self.profile.slice_profile, self.profile.slice_thickness, header, self.input_image
        )
        for line in choice.warnings:
            logger.warning("%s", line)
        logger.info(
            "adaptation: slice profile %s (%s), thickness %.3g mm (%s)",
            choice.geometry.profile,
            choice.profile_source,
            choice.geometry.thickness,
            choice.thickness_source,
        )
        return choice

    def _held_out(
        self,
        network: torch.nn.Module,
        pairs: InPlanePairs,
        split: SliceSplit,
        geometry: ScanGeometry,
        alternatives: tuple[tuple[str, float], ...] = (),
    ) -> tuple[dict[str, Any], CalibrationRecord | None]:
        """SR and B-spline on the held-out images; the same on held-out pairs made with each of the `alternatives`
        (other plausible slice profiles: evidence the assumed one does not make); the calibration of the bound
        (calibration images, on the output as the consistency step writes it) and its coverage (check images).

        The bound must hold whichever plausible profile made the scan, so it is calibrated on the pairs of the
        profile, assumed or alternative, that need the largest lambda (the output is projected with the assumed
        profile in every case, as the scan's is); `error_variance_ratio` comes from the same pairs. On the template
        made thick with a 3 mm Gaussian profile every 5 mm (estimated: box 1.0 mm, interval to 3.75 mm), the same
        adapted model covered 89.3 % of the through-plane errors with it, 84.7 % without (docs/results.md). The
        record is None with one pass."""
        step = self._consistency_step(geometry, (1, 1, pairs.scale), geometry.fwhm_factor)
        scores = self._held_out_scores(network, pairs, split, geometry, step)
        stats: dict[str, Any] = _means(scores["quality"])
        judged = [
            self._held_out_scores(
                network, pairs, split, dataclasses.replace(geometry, profile=shape, thickness=t), step
            )
            for shape, t in alternatives
        ]
        stats["other_profiles"] = [
            {"profile": shape, "thickness_mm": round(float(t), 4)} | _means(other["quality"])
            for (shape, t), other in zip(alternatives, judged, strict=True)
        ]
        if self.trust.uncertainty == 1:
            return stats, None
        target = self.trust.coverage_target
        profiles = [scores, *judged]  # the assumed profile first, then the alternatives
        lambdas = [profile["calibration"].lambda_(target) for profile in profiles]
        # the profile whose pairs need the widest bound calibrates it: its lambda and its error per unit variance
        calibration = profiles[lambdas.index(max(lambdas))]["calibration"]
        record = calibration.record(target, self.trust.uncertainty, "tta_mean")
        record.error_variance_ratio = calibration.error_variance_ratio()
        record.consistency_mode, record.consistency_operator = self.trust.consistency, geometry.operator
        stats["lam_assumed"] = lambdas[0]
        for entry, other, lam in zip(stats["other_profiles"], judged, lambdas[1:], strict=True):
            entry.update(lam=lam, coverage_check=other["check"].coverage(record.lam))
        check = scores["check"]
        stats.update(lam=record.lam, coverage_check=check.coverage(record.lam), check_voxels=check.voxels_seen)
        return stats, record

    def _held_out_scores(
        self,
        network: torch.nn.Module,
        pairs: InPlanePairs,
        split: SliceSplit,
        made_by: ScanGeometry,
        step: ConsistencyStep,
    ) -> dict[str, Any]:
        """The held-out images (calibration and check, both in-plane orientations) degraded with the slice profile
        of `made_by`, super-resolved with every test-time pass and written through `step` (the assumed profile's
        consistency step): {"quality": PSNR / SSIM lists of SR and cubic B-spline, "calibration" / "check":
        ConformalAccumulator of |written - HR| over the TTA std (empty with one pass)}."""
        bspline = BSplineUpsample3D((1, 1, pairs.scale))
        out: dict[str, Any] = {"quality": {}}
        for part, indices in (("calibration", split.calibration), ("check", split.check)):
            out[part] = ConformalAccumulator(seed=self.generator.fit.seed if part == "calibration" else 0)
            index = torch.as_tensor(indices, dtype=torch.long)
            for orientation in (0, 1):
                hr = pairs.hr[orientation][index]
                lr = degrade_along_last(hr, made_by)[:, None, None]
                hr = hr[:, None, None]
                mean, std = predict_slabs(network, lr, self.trust.uncertainty, device=self.device)
                _add_quality(out["quality"], mean, bspline(lr), hr)
                if self.trust.uncertainty > 1:
                    written = step(mean, lr).output
                    out[part].add((written - hr).abs(), std, hr > self.intensity.foreground_threshold)
        return out

    def _ensemble_bound(
        self,
        prediction: VolumePrediction,
        written: torch.Tensor,
        volume: torch.Tensor,
        geometry: ScanGeometry,
        record: CalibrationRecord,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The bound of the written output `written` (X, Y, sZ, `_maps`' SR), normalised units: calibrated on
        single members (one orientation), so lambda * max(std, floor) narrowed by `ensemble_shrink` for the average
        of the members. Their spread is measured on the output as the consistency step writes it (an affine map, so
        the written output is the average of the written members), as the calibration measured its errors."""
        step = self._consistency_step(geometry, geometry.scale3, geometry.output_fwhm_factor)
        spread = prediction.spread(lambda x: step(x[None], volume[None]).output[0], written)
        foreground = prediction.sr > self.intensity.foreground_threshold
        members = len(prediction.members)
        shrink = ensemble_shrink(prediction.std, spread, members, record, foreground)
        return calibrated_uncertainty(prediction.std, record) * shrink, {"members": members, "shrink": shrink}

    def _maps(
        self, sr: torch.Tensor, lr: torch.Tensor, geometry: ScanGeometry
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(SR, consistency map or None for "off") from inference's consistency step: the SR projected when
        `consistency` is "project", the map |D(SR) - LR| of the network's output before projection; (X, Y, sZ)."""
        step = self._consistency_step(geometry, geometry.scale3, geometry.output_fwhm_factor)
        result = step(sr[None], lr[None])
        return result.output[0], None if result.residual is None else result.residual[0]

    # -- the workflow ---------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Adapt, predict and write; the output folder is locked for the run (a second run into it stops in one
        line naming this one)."""
        started = time.monotonic()
        image, name, is_dicom = load_scan(self.input_image, self.dicom_series)
        check_writable(self.output_dir)
        with FolderLock(self.output_dir, "adapting", "output_dir"):
            return self._run(started, image, name, is_dicom)

    def _run(self, started: float, image: MetaTensor, name: str, is_dicom: bool) -> dict[str, Any]:
        paths = self._outputs(name, is_dicom)
        affine = torch.as_tensor(image.affine, dtype=torch.float64)
        spacing = torch.linalg.norm(affine[:3, :3], dim=0).tolist()
        sampling = find_geometry(spacing, None, "gaussian", source=self.input_image)  # the profile comes next
        volume, lo, hi = self._normalise(image.as_tensor().float().cpu())
        choice = self._profile(volume, sampling, self._slice_header(image, is_dicom))
        geometry = choice.geometry
        logger.info("%s: %s", name, geometry.describe())
        images = in_plane_images(volume, geometry.slice_axis, geometry.scale)
        split = split_slices(
            images.shape[0], self.trust.held_out_fraction, self.generator.fit.seed, source=self.input_image
        )
        pairs = InPlanePairs(
            images, geometry, all_phases=self.generator.fit.all_phases, rotations=self.generator.fit.rotations
        )
        torch.manual_seed(self.generator.fit.seed)
        network = self._network(geometry)
        held_out_pixels = (len(split.calibration) + len(split.check)) * 2 * pairs.lr[0][0].numel()
        held_out_pixels *= 1 + len(choice.alternatives)
        cost = measure_prediction(
            network,
            volume,
            geometry,
            self.trust.uncertainty,
            self.trust.predict_rotations,
            held_out_pixels,
            self.device,
        )
        budget = self.max_minutes * 60.0
        seconds = training_seconds(budget, time.monotonic() - started, cost, source=self.input_image)
        perceptual = self._perceptual() if self.generator.fit.perceptual_weight else None
        result = fit(network, pairs, split.train, self.generator.fit, seconds, self.device, perceptual)
        held_out, calibration = self._held_out(network, pairs, split, geometry, choice.alternatives)
        verdict = judge_against_bspline(held_out, held_out["other_profiles"], choice.thickness_source == "estimate")
        fallback, prediction, bound, ensemble = verdict is not None, None, None, None
        if verdict is not None:
            logger.warning("%s: %s; writing the B-spline result instead", name, verdict)
            sr = BSplineUpsample3D(geometry.scale3)(volume[None, None])[0, 0]
            calibration = None
        else:
            prediction = self._predict(network, volume, geometry, cost, started)
            sr = prediction.sr
        sr, consistency = self._maps(sr, volume, geometry)
        if prediction is not None and calibration is not None:
            bound, ensemble = self._ensemble_bound(prediction, sr, volume, geometry, calibration)
        turns = 0 if prediction is None else prediction.turns
        span = hi - lo  # back to the input's units as inference's RestoreIntensityd: the SR with offset, maps without
        sr = sr * span + lo
        if nonnegative_applies(self.trust.nonnegative, float(image.min()), consistency=self.trust.consistency):
            sr = sr.clamp_min(0)  # magnitude images are never negative (inference's rule)
        maps = {
            "consistency": None if consistency is None else consistency * span,
            "uncertainty": None if bound is None else bound * span,
        }
        out_affine = super_resolution_affine(affine, geometry.scale3)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            self._write(written, paths, image, out_affine, sr, maps)
            state = {k: v.detach().cpu() for k, v in network.state_dict().items()}  # RRDBNet3D keys: load anywhere
            written.append(replace_atomically(paths["model"], lambda tmp: torch.save(state, tmp)))
            summary = self._summary(name, geometry, split, result, held_out, calibration, fallback, written, started)
            summary.update(self._budget_facts(choice, cost, turns, fallback, started))
            if ensemble is not None and calibration is not None:  # how the written bound was made, to reproduce it
                summary["uncertainty"].update(
                    bound="lambda * max(std, std_floor) * ensemble.shrink",
                    lambda_assumed_profile=round(held_out["lam_assumed"], 5),
                    error_variance_ratio=calibration.error_variance_ratio,
                    ensemble=ensemble,
                )
            write_text_atomic(paths["summary"], json.dumps(summary, indent=2) + "\n")
        except BaseException:
            if written:  # a partial set (a full disk): none of this scan's outputs stay, so a rerun is not refused
                self._remove_outputs(paths)
            raise
        logger.info("%s: wrote %s", name, ", ".join(str(p) for p in [*written, paths["summary"]]))
        return summary

    def _predict(
        self, network: torch.nn.Module, volume: torch.Tensor, geometry: ScanGeometry, cost: PredictionCost, started
    ) -> VolumePrediction:
        """`predict_volume` with progress and an ETA; each turn only when the time left holds it (else said)."""
        a, b = (volume.shape[i] for i in geometry.in_plane_axes)
        progress = PredictionProgress(a + b, "adaptation: predicting")
        budget = self.max_minutes * 60.0

        unturned_took: float | None = None  # the unturned prediction's real seconds

        def turn_fits() -> bool:  # called before each turn, the first time right after the unturned prediction
            nonlocal unturned_took
            if unturned_took is None:
                unturned_took = progress.elapsed
            fits = cost.turn_fits(budget - (time.monotonic() - started), unturned_took=unturned_took)
            if fits:
                padded = [n + 2 * p for n, p in zip((a, b), rotation_padding((a, b)), strict=True)]
                progress.add_total(sum(padded))
            else:
                logger.warning("adaptation: the turned prediction does not fit in the time left; skipped")
            return fits

        return predict_volume(
            network,
            volume,
            geometry,
            self.trust.uncertainty,
            device=self.device,
            rotations=self.trust.predict_rotations,
            progress=progress,
            turn_fits=turn_fits,
        )

    def _perceptual(self) -> torch.nn.Module:
        from bundle.training.losses import RandomSlicePerceptualLoss

        loss = RandomSlicePerceptualLoss(slices_per_plane=1, planes=("yz",), weights=self.generator.perceptual_weights)
        return loss.to(self.device)

    def _write(self, written: list[Path], paths, image, affine, sr, maps: dict[str, torch.Tensor | None]) -> None:
        """Write the SR and its maps (input units; None: not written), appending each path to `written` as soon as
        it is in place."""
        self._remove_stale(paths, sr_only=maps["consistency"] is None, bound=maps["uncertainty"] is not None)
        if self.outputs.output_format == "dicom":
            written.append(self._write_dicom(paths["sr"], image, affine, sr))
        else:
            written.append(write_nifti_atomic(sr[None], affine, paths["sr"]))
        for key, values in maps.items():
            if values is not None:
                written.append(write_nifti_atomic(values[None], affine, paths[key]))

    @staticmethod
    def _remove_outputs(paths: dict[str, Path]) -> None:
        """After a failed write: remove every output of this scan (this run's, and under --overwrite the earlier
        run's that no longer match the new SR)."""
        remove_partial_outputs(paths.values())

    def _remove_stale(self, paths: dict[str, Path], sr_only: bool, bound: bool) -> None:
        """Before writing: remove the earlier run's outputs (replaced under --overwrite) that this run will not
        write again (no uncertainty after a fallback or with one pass, no map with consistency "off", the SR in
        the other format), so no map of another SR is left beside the new one."""
        if not self.outputs.overwrite:  # then no earlier output of this name is there (refused before)
            return
        dicom = self.outputs.output_format == "dicom"
        stale = [paths["sr"].with_name(paths["sr"].name + ".nii.gz" if dicom else paths["sr"].name[: -len(".nii.gz")])]
        stale += [paths["consistency"]] if sr_only else []
        stale += [] if bound else [paths["uncertainty"]]
        for path in stale:
            if remove_path(path):
                logger.info("%s: removed, an earlier run's output that this run does not write", path)

    def _write_dicom(self, target: Path, image: MetaTensor, affine: torch.Tensor, sr: torch.Tensor) -> Path:
        from bundle.inference.dicom_out import source_series_files, write_derived_series

        try:
            sources = source_series_files(dict(image.meta))
            scale = [1, 1, 1]
            write_derived_series(
                sr, affine, sources, target, "mri_sr per-scan adaptation", self.outputs.model_version, scale
            )
        except ValueError as err:
            raise OutputError(f"{target}: cannot write a DICOM series ({' '.join(str(err).split())})") from None
        return target

    def _budget_facts(
        self, choice: ProfileChoice, cost: PredictionCost, turns: int, fallback: bool, started: float
    ) -> dict[str, Any]:
        """The summary's slice-profile sources and the time budget: what was reserved and what was used."""
        return {
            "slice_profile": choice.as_dict(),
            "predict_rotations": turns,
            "predict_rotations_asked": 0 if fallback else self.trust.predict_rotations,
            "budget": {
                "max_minutes": self.max_minutes,
                "prediction_measured": cost.as_dict(),
                "elapsed_before_writing_s": round(time.monotonic() - started, 1),
            },
        }

    def _summary(
        self, name, geometry, split, result: FitResult, held_out, calibration, fallback, written, started
    ) -> dict:
        return {
            "name": name,
            "input": str(self.input_image),
            "workflow": "per-scan adaptation",
            "version": self.outputs.model_version,
            "geometry": {**asdict(geometry), "output_spacing": list(geometry.output_spacing)},
            "slices": {"train": list(split.train), "calibration": list(split.calibration), "check": list(split.check)},
            "training": {
                "iterations": result.iterations,
                "patch_pairs": result.patches,
                "seconds": round(result.seconds, 1),
                "settings": asdict(self.generator.fit),
                "warm_start": self.generator.warm_start,
                "started_from": self.started_from,
            },
            "held_out": {
                k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else v) for k, v in held_out.items()
            },
            "gain_over_bspline_db": round(held_out["psnr_sr"] - held_out["psnr_bspline"], 3),
            "fallback_to_bspline": fallback,
            "uncertainty": (
                None
                if calibration is None
                else {
                    "coverage_target": self.trust.coverage_target,
                    "coverage_on_check_slices": round(held_out["coverage_check"], 4),
                    "lambda": round(calibration.lam, 5),
                    "std_floor": calibration.std_floor,
                    "tta_passes": self.trust.uncertainty,
                    "consistency_mode": calibration.consistency_mode,
                }
            ),
            # as inference's trust summary: "calibration" missing when no bound was calibrated (one pass, fallback)
            "missing": [] if calibration is not None else ["calibration"],
            "consistency_step": {
                "operator": geometry.operator,
                "mode": self.trust.consistency,
                "map": None if self.trust.consistency == "off" else "of the network's output before projection",
            },
            "input_outliers": self.input_outliers,
            "outputs": [str(p) for p in written],
            "wall_seconds": round(time.monotonic() - started, 1),
        }
