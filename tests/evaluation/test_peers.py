"""bundle.evaluation.peers: thick-slice simulation, grids, scores, table, measurement and failure handling."""

import json
import math
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle.data.operators import axis_matrix
from bundle.evaluation.peers import benchmark, cases, drivers, interpolation, measure, report, scoring, simulation
from bundle.evaluation.protocol import upsample_baseline

# an oblique, flipped affine (LIA-like, as a FreeSurfer-conformed scan) so axis mix-ups show
AFFINE = np.array([[-1.0, 0.0, 0.0, 90.0], [0.0, 0.0, 1.0, -120.0], [0.0, -1.0, 0.0, 110.0], [0, 0, 0, 1]])


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize(
    "factor, n, expected",
    [
        (4, 8, [1.5, 5.5]),  # means of 0..3 and 4..7
        (5, 10, [2.0, 7.0]),
        (4.5, 9, [(0 + 1 + 2 + 3 + 0.5 * 4) / 4.5, (0.5 * 4 + 5 + 6 + 7 + 8) / 4.5]),  # half of voxel 4 in each slab
    ],
)
def test_box_profile_against_hand_made_means(factor, n, expected):
    ramp = np.arange(n, dtype=np.float32)[None, :, None].repeat(2, 0).repeat(3, 2)
    thick = simulation.simulate_thick(ramp, axis=1, factor=factor, profile="box")
    assert thick.shape == (2, len(expected), 3)
    np.testing.assert_allclose(thick[0, :, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(thick[1, :, 2], expected, rtol=1e-6)  # the other axes are untouched


@pytest.mark.parametrize("factor", [4, 5])
def test_gaussian_profile_weights_are_the_voxel_integrated_gaussian_of_fwhm_the_thickness(factor):
    n = 8 * factor
    w = simulation.slice_weights(n, factor, "gaussian")
    sigma = factor / (2 * math.sqrt(2 * math.log(2)))  # FWHM = factor thin voxels
    k = 3  # an interior slab: centre at (k + 1/2) f, nothing cut off by the volume's ends
    mu = (k + 0.5) * factor
    expected = [_phi((j + 1 - mu) / sigma) - _phi((j - mu) / sigma) for j in range(n)]
    np.testing.assert_allclose(w[k], np.array(expected) / sum(expected), atol=1e-9)
    centre = (w[k] * (np.arange(n) + 0.5)).sum()
    assert centre == pytest.approx(mu)
    assert (w[k] * (np.arange(n) + 0.5 - mu) ** 2).sum() == pytest.approx(sigma**2 + 1 / 12, rel=1e-3)  # + box var
    # a linear ramp samples at each slab's centre (thin index (k + 1/2) f - 1/2) away from the ends
    ramp = np.arange(n, dtype=np.float64)[None, None, :]
    thick = simulation.simulate_thick(ramp, axis=2, factor=factor, profile="gaussian")[0, 0]
    np.testing.assert_allclose(thick[2:-2], (np.arange(8) + 0.5)[2:-2] * factor - 0.5, atol=1e-4)


@pytest.mark.parametrize("profile", simulation.PROFILES)
@pytest.mark.parametrize("factor", [4, 5, 4.5])
def test_a_constant_stays_constant_up_to_the_edges(profile, factor):
    n = int(round(simulation.thick_count(40, factor) * factor))
    thick = simulation.simulate_thick(np.full((3, n, 2), 7.0, np.float32), 1, factor, profile)
    np.testing.assert_allclose(thick, 7.0, rtol=1e-6)


def test_crop_to_factor_keeps_whole_slabs_centred():
    assert simulation.crop_to_factor(257, 4) == (0, 256)
    assert simulation.crop_to_factor(160, 5) == (0, 160)
    assert simulation.crop_to_factor(160, 4.5) == (3, 153)  # 34 slabs: 35 x 4.5 is not a whole number of voxels
    with pytest.raises(ValueError, match="fewer than two"):
        simulation.crop_to_factor(5, 4)


@pytest.mark.parametrize("factor", [4, 5])
def test_thick_voxel_centre_is_the_centre_of_the_thin_voxels_it_covers(factor):
    lr = simulation.thick_affine(AFFINE, axis=1, factor=factor)
    for k in range(3):
        thin = [AFFINE @ [2, k * factor + j, 5, 1] for j in range(factor)]
        np.testing.assert_allclose(lr @ [2, k, 5, 1], np.mean(thin, axis=0), atol=1e-9)
    assert nib.affines.voxel_sizes(lr) == pytest.approx([1, factor, 1])


def test_non_integer_factor_centre_is_the_slab_centre():
    lr = simulation.thick_affine(AFFINE, axis=1, factor=4.5)
    for k in range(3):
        np.testing.assert_allclose(lr @ [0, k, 0, 1], AFFINE @ [0, (k + 0.5) * 4.5 - 0.5, 0, 1], atol=1e-9)


def test_superior_axis_of_a_coronal_stack():
    assert simulation.superior_axis(AFFINE) == 1  # LIA: the second voxel axis runs inferior
    assert simulation.superior_axis(np.eye(4)) == 2


@pytest.mark.parametrize("method", ["bspline", "trilinear"])
def test_interpolation_matches_the_evaluation_baselines(method):
    rng = np.random.default_rng(0)
    thick = rng.random((6, 5, 7)).astype(np.float32)
    ours = interpolation.interpolate_axis(thick, axis=1, factor=4, method=method)
    ref = upsample_baseline(torch.from_numpy(thick)[None, None], (1, 4, 1), method)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("factor", [4, 4.5])
def test_interpolated_output_lands_on_the_hr_grid(tmp_path, factor):
    n = int(round(simulation.thick_count(20, factor) * factor))
    hr_img = nib.Nifti1Image(np.zeros((4, n, 5), np.float32), AFFINE)
    lr = np.random.default_rng(1).random((4, simulation.thick_count(20, factor), 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(lr, simulation.thick_affine(AFFINE, 1, factor)), tmp_path / "thick.nii.gz")
    out = interpolation.interpolate("bspline", str(tmp_path / "thick.nii.gz"), str(tmp_path / "up.nii.gz"), factor)
    img = nib.load(out)
    assert img.shape == hr_img.shape
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    assert scoring.to_hr_grid(img, hr_img)[1] == "same grid"


def test_to_hr_grid_undoes_a_flip_and_an_offset_exactly():
    hr = np.random.default_rng(2).random((5, 6, 7)).astype(np.float32)
    hr_img = nib.Nifti1Image(hr, AFFINE)
    # the same voxels stored with axis 0 reversed and one extra slice before axis 2, affine saying so
    stored = np.concatenate([np.zeros((5, 6, 1), np.float32), hr[::-1]], axis=2)
    flip = np.array([[-1, 0, 0, 4], [0, 1, 0, 0], [0, 0, 1, -1], [0, 0, 0, 1]], dtype=np.float64)  # stored -> hr index
    out_img = nib.Nifti1Image(stored, AFFINE @ flip)
    back, note = scoring.to_hr_grid(out_img, hr_img)
    np.testing.assert_allclose(back, hr, atol=1e-6)
    assert note.startswith("resampled") and "corner offset" in note
    same, note = scoring.to_hr_grid(hr_img, hr_img)
    assert note == "same grid" and np.array_equal(same, hr)


@pytest.mark.parametrize("affine", [AFFINE, np.eye(4)])
def test_figure_planes_put_superior_up(affine):
    # each voxel's value is its world superior coordinate: the top row of every plane must hold the largest
    idx = np.indices((4, 5, 6)).reshape(3, -1)
    vol = (affine[2, :3] @ idx).reshape(4, 5, 6)
    codes = nib.aff2axcodes(affine)
    axis = simulation.superior_axis(affine)
    for normal in [a for a in range(3) if a != axis]:
        img = report._plane(vol, normal, axis, codes)
        assert img.shape[0] == vol.shape[axis]
        assert np.all(img[0] == vol.max()) and np.all(img[-1] == vol.min())


def test_score_uses_the_hr_percentile_range_for_every_method():
    hr = np.random.default_rng(3).random((16, 16, 16)).astype(np.float32) * 100 + 50
    lo, hi = scoring.intensity_range(hr)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(hr, [0.5, 99.5])))
    perfect = scoring.score(hr.copy(), hr)
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["psnr"] > 100
    shifted = scoring.score(hr + 0.1 * (hi - lo), hr)  # an offset of a tenth of the range: MSE 0.01 -> 20 dB
    assert shifted["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert shifted["psnr_fg"] == pytest.approx(20.0, abs=1e-3)
    with pytest.raises(ValueError, match="HR grid"):
        scoring.score(hr[:-1], hr)


def _row(method, psnr=None, status="ok", setting="gaussian_x4", **extra):
    row = {"scan": "S", "setting": setting, "method": method, "status": status, **extra}
    if status == "ok":
        row.update(
            psnr=psnr, ssim=0.8, psnr_fg=psnr - 1, ssim_fg=0.7, wall_s=75.0, peak_rss_mb=2048.0, grid="same grid"
        )
    return row


def test_table_gives_gain_over_bspline_and_one_line_per_failure():
    rows = [_row("bspline", 22.0), _row("trilinear", 21.5), _row("eclare", status="failed", error="boom: no GPU")]
    md = report.markdown_table(rows).splitlines()
    assert len(md) == 2 + 3
    assert md[2].startswith("| S | gaussian_x4 | bspline | 22.00 |") and "| +0.00 |" in md[2]
    assert "| -0.50 |" in md[3] and "1.2 min" in md[3] and "2.00 GB" in md[3]
    assert "failed: boom: no GPU" in md[4]


def test_first_error_line_prefers_the_exception_of_a_traceback():
    tb = "Traceback (most recent call last):\n  File x, line 1\nRuntimeError: Found no NVIDIA driver\n"
    assert measure.first_error_line(tb) == "RuntimeError: Found no NVIDIA driver"
    assert measure.first_error_line("\nerror: no such file\nmore\n") == "error: no such file"
    assert measure.first_error_line("") == "no message on stderr"


@pytest.mark.slow  # sleeps and an RSS threshold (timing-based): `make test-slow`
def test_run_measured_reports_rc_memory_and_stops_at_the_timeout(tmp_path):
    ok = measure.run_measured(
        [sys.executable, "-c", "x = bytearray(200 * 2**20); import time; time.sleep(1.5)"], tmp_path / "a", "a", 30
    )
    assert ok["rc"] == 0 and ok["peak_rss_mb"] > 150 and "error" not in ok
    slow = measure.run_measured([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "b", "b", 1.0)
    assert slow["rc"] is None and slow["wall_s"] < 15 and "stopped after" in slow["error"]


def _make_scans(tmp_path):
    """An MSD test set with one 1 mm scan and one 2 mm scan (which the thick step must skip)."""
    folder = tmp_path / "scans" / "imagesTs"
    folder.mkdir(parents=True)
    z = np.linspace(-1, 1, 24)
    head = np.exp(-4 * (z[:, None, None] ** 2 + z[None, :, None] ** 2 + z[None, None, :] ** 2)) * 100
    nib.save(nib.Nifti1Image(head.astype(np.float32), np.eye(4)), folder / "thin.nii.gz")
    nib.save(nib.Nifti1Image(head.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), folder / "coarse.nii.gz")
    return tmp_path / "scans"


def test_thick_step_writes_aligned_pairs_and_skips_coarse_scans(tmp_path, capsys):
    out = tmp_path / "peers"
    written = benchmark.thick(
        str(_make_scans(tmp_path)), str(out), factors=[4, 4.5], profiles=["box"], crop_foreground=False
    )
    assert sorted(p.split("/")[-1] for p in written) == ["box_x4", "box_x4.5"]
    assert "coarse: skipped" in capsys.readouterr().out
    folder = out / "thick" / "thin" / "box_x4"
    hr, lr = nib.load(folder / "hr.nii.gz"), nib.load(folder / "thick.nii.gz")
    assert hr.shape == (24, 24, 24) and lr.shape == (24, 24, 6)  # RAS identity: the slice axis is the last
    np.testing.assert_allclose(lr.affine, simulation.thick_affine(hr.affine, 2, 4), atol=1e-6)
    np.testing.assert_allclose(lr.get_fdata()[..., 1], hr.get_fdata()[..., 4:8].mean(-1), rtol=1e-5)
    assert json.loads((folder / "setting.json").read_text())["axis"] == 2
    short = nib.load(out / "thick" / "thin" / "box_x4.5" / "hr.nii.gz")
    assert short.shape == (24, 24, 18)
    np.testing.assert_allclose(short.affine[:3, 3], [0, 0, 3])  # centred crop: 3 slices dropped before


def test_run_resumes_skipping_finished_pairs_and_records_failures(tmp_path, monkeypatch):
    out = tmp_path / "peers"
    benchmark.thick(str(_make_scans(tmp_path)), str(out), factors=[4], profiles=["box"], crop_foreground=False)
    failing = cases.Plan(
        [sys.executable, "-c", "import sys; sys.stderr.write('boom: weights unreachable\\n'); sys.exit(3)"],
        tmp_path / "x",
    )
    monkeypatch.setitem(benchmark.PLANNERS, "saint", lambda case, work, budget: failing)
    first = benchmark.run(str(out), methods="saint,bspline", budget_minutes=1, settings="box_x4")
    by_method = {r["method"]: r for r in first}
    assert [r["method"] for r in first] == ["bspline", "saint"]  # baseline first
    assert by_method["bspline"]["status"] == "ok" and by_method["bspline"]["psnr"] > 20
    assert by_method["saint"]["status"] == "failed" and by_method["saint"]["error"] == "boom: weights unreachable"

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished pair was run again")

    monkeypatch.setattr(benchmark, "run_one", must_not_run)
    again = benchmark.run(str(out), methods="bspline,saint", budget_minutes=1, settings="box_x4")
    assert [r["status"] for r in again] == ["ok", "failed"]
    path = report.report(str(out))
    table = [ln for ln in open(path).read().splitlines() if ln.startswith("| thin |")]
    assert len(table) == 2 and "failed: boom: weights unreachable" in table[1]
    assert (out / "report" / "thin_box_x4.png").stat().st_size > 1000
    assert json.loads((out / "report" / "peers.json").read_text())[0]["method"] == "bspline"


def test_a_planner_that_cannot_build_its_environment_gives_one_failed_line(tmp_path, monkeypatch):
    out = tmp_path / "peers"
    benchmark.thick(str(_make_scans(tmp_path)), str(out), factors=[4], profiles=["gaussian"], crop_foreground=False)

    def no_env(case, work, budget):
        raise RuntimeError("building .venv-peers/eclare failed: No matching distribution found for eclare\nmore")

    monkeypatch.setitem(benchmark.PLANNERS, "eclare", no_env)
    [result] = benchmark.run(str(out), methods="eclare", budget_minutes=1, settings="gaussian_x4")
    assert result["status"] == "failed"
    assert result["error"] == "building .venv-peers/eclare failed: No matching distribution found for eclare"


def test_bad_options_get_one_line():
    with pytest.raises(SystemExit, match="--methods: unknown"):
        benchmark.run("nowhere", methods="bspline,magic")
    with pytest.raises(SystemExit, match="--settings"):
        simulation.parse_setting("cubic_x4")
    with pytest.raises(SystemExit, match="no simulated scans"):
        benchmark.run("nowhere", methods="bspline")


def test_eclare_patch_count_fits_the_budget():
    patches = drivers.eclare_patches(1200, 96**3)
    overhead = drivers.ECLARE_OVERHEAD_S_PER_MVOXEL * 96**3 / 1e6
    assert patches >= 128
    assert patches % 128 == 0
    assert (
        overhead + patches / drivers.ECLARE_PATCHES_PER_S
        <= 1200
        < overhead + (patches + 128) / drivers.ECLARE_PATCHES_PER_S
    )
    assert drivers.eclare_patches(10, 10**8) == 128  # never zero, even when inference alone overruns the budget


@pytest.mark.slow  # builds .venv-peers/eclare on first use (pip, minutes) and trains ECLARE briefly on CPU
def test_eclare_runs_through_its_cli_and_lands_on_the_hr_grid(tmp_path):
    out = tmp_path / "peers"
    benchmark.thick(str(_make_scans(tmp_path)), str(out), factors=[4], profiles=["gaussian"], crop_foreground=False)
    [result] = benchmark.run(str(out), methods="eclare", budget_minutes=1.5, settings="gaussian_x4")
    assert result["status"] == "ok", result.get("error")
    assert result["psnr"] > 15 and result["peak_rss_mb"] > 100


@pytest.mark.parametrize("factor", [4, 5])
def test_box_profile_is_the_bundles_area_operator_and_gaussian_its_gaussian_away_from_the_ends(factor):
    """Why the benchmark keeps its own simulator (bundle.evaluation.peers.simulation): at whole factors it is the
    bundle's operators, except the Gaussian's first and last two slabs (dropped and renormalised there, folded back by the
    bundle's); fractional factors (4.5) the bundle's operators do not model."""
    n = 10 * factor
    box = simulation.slice_weights(n, factor, "box")
    np.testing.assert_allclose(box, axis_matrix(n, factor, "area").numpy(), atol=1e-12)
    gauss, bundle_gauss = simulation.slice_weights(n, factor, "gaussian"), axis_matrix(n, factor, "gaussian").numpy()
    # slabs whose profile stays inside the volume: equal up to the bundle's cut of the profile at 4 sigma
    np.testing.assert_allclose(gauss[2:-2], bundle_gauss[2:-2], atol=1e-5)
    assert np.abs(gauss[0] - bundle_gauss[0]).max() > 1e-2  # the first slab: dropped and renormalised vs folded


def test_the_script_is_the_packages_command_line():
    import benchmark_peers as script

    assert script.run is benchmark.run and script.thick is benchmark.thick and script.report is report.report
    assert benchmark.PLANNERS["adapt"] is script.plan_adapt  # the adaptation stage wired in above the package
    assert benchmark.PLANNERS["adapt_told"] is script.plan_adapt_told


# settings with a gap: the slice profile narrower than the slice spacing (a 3 mm slice every 5 mm)


def test_box_with_a_gap_averages_only_the_thin_voxels_inside_its_width():
    w = simulation.slice_weights(20, 5, "box", thickness=3)
    np.testing.assert_allclose(w[0], np.array([0, 1, 1, 1, 0] + [0] * 15) / 3, atol=1e-12)
    np.testing.assert_allclose(w[2, 10:15], np.array([0, 1, 1, 1, 0]) / 3, atol=1e-12)
    half = simulation.slice_weights(16, 4, "box", thickness=2)  # [1, 3] of each slab of 4: voxels 1 and 2 whole
    np.testing.assert_allclose(half[1, 4:8], [0, 0.5, 0.5, 0], atol=1e-12)
    odd = simulation.slice_weights(16, 4, "box", thickness=3)  # [0.5, 3.5]: halves of the outer voxels
    np.testing.assert_allclose(odd[0, :4], np.array([0.5, 1, 1, 0.5]) / 3, atol=1e-12)


@pytest.mark.parametrize("thickness, factor", [(3, 5), (2, 4), (4, 4), (6, 4)])
def test_gaussian_fwhm_measured_from_the_weights_is_the_thickness(thickness, factor):
    n = 10 * factor
    w = simulation.slice_weights(n, factor, "gaussian", thickness=thickness)[4]  # an interior slab
    mu = 4.5 * factor
    assert (w * (np.arange(n) + 0.5)).sum() == pytest.approx(mu)  # centred on the slab, gap or not
    variance = (w * (np.arange(n) + 0.5 - mu) ** 2).sum() - 1 / 12  # less the thin voxel's own (box) variance
    fwhm = 2 * math.sqrt(2 * math.log(2)) * math.sqrt(variance)
    assert fwhm == pytest.approx(thickness, rel=2e-3)


@pytest.mark.parametrize("profile", simulation.PROFILES)
@pytest.mark.parametrize("factor", [4, 5, 4.5])
def test_no_thickness_is_the_published_simulation_bit_for_bit(profile, factor):
    n = int(round(simulation.thick_count(40, factor) * factor))
    default = simulation.slice_weights(n, factor, profile)
    assert np.array_equal(default, simulation.slice_weights(n, factor, profile, thickness=None))
    assert np.array_equal(default, simulation.slice_weights(n, factor, profile, thickness=factor))
    hr = np.random.default_rng(4).random((3, n, 2)).astype(np.float32)
    assert np.array_equal(
        simulation.simulate_thick(hr, 1, factor, profile), simulation.simulate_thick(hr, 1, factor, profile, None)
    )


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("gaussian_x4", ("gaussian", 4.0, None)),
        ("box_x4.5", ("box", 4.5, None)),
        ("gaussian_t3_x5", ("gaussian", 5.0, 3.0)),
        ("box_t2.5_x4", ("box", 4.0, 2.5)),
    ],
)
def test_setting_names_round_trip(name, parsed):
    assert simulation.parse_setting(name) == parsed
    assert simulation.setting_name(*parsed) == name


@pytest.mark.parametrize(
    "bad", ["gaussian_t0_x5", "gaussian_t-1_x5", "gaussian_tx_x5", "box_t3", "cubic_t3_x5", "box_x1"]
)
def test_a_bad_setting_name_gets_one_line(bad):
    with pytest.raises(SystemExit, match="--settings") as err:
        simulation.parse_setting(bad)
    assert "\n" not in str(err.value) and "<profile>_t<thickness>_x<factor>" in str(err.value)


def test_thick_step_writes_named_gap_settings_with_their_thickness(tmp_path):
    out = tmp_path / "peers"
    written = benchmark.thick(
        str(_make_scans(tmp_path)), str(out), settings="box_t2_x4,gaussian_x4", crop_foreground=False
    )
    assert sorted(p.split("/")[-1] for p in written) == ["box_t2_x4", "gaussian_x4"]
    folder = out / "thick" / "thin" / "box_t2_x4"
    meta = json.loads((folder / "setting.json").read_text())
    assert (meta["profile"], meta["factor"], meta["thickness"]) == ("box", 4.0, 2.0)
    hr, lr = nib.load(folder / "hr.nii.gz").get_fdata(), nib.load(folder / "thick.nii.gz").get_fdata()
    np.testing.assert_allclose(lr[..., 1], hr[..., 5:7].mean(-1), rtol=1e-5)  # voxels 5, 6 of the slab 4..7
    assert json.loads((out / "thick" / "thin" / "gaussian_x4" / "setting.json").read_text())["thickness"] == 4.0
    [case] = cases.load_cases(out, ["box_t2_x4"])
    assert case.thickness == 2.0 and case.profile_width == 2.0 and case.thickness_mm == pytest.approx(2.0)


def test_a_setting_written_before_gaps_existed_still_loads_as_wide_as_its_factor(tmp_path):
    folder = tmp_path / "thick" / "S" / "box_x4.5"
    folder.mkdir(parents=True)
    meta = {"scan": "S", "setting": "box_x4.5", "axis": 2, "factor": 4.5, "profile": "box"}
    (folder / "setting.json").write_text(json.dumps(meta))
    [case] = cases.load_cases(tmp_path)
    assert case.thickness is None and case.profile_width == 4.5


def test_coverage_is_the_share_of_foreground_voxels_within_the_bound():
    hr = np.zeros((10, 10, 10), np.float32)
    hr[:, :, 5:] = 100.0  # background half (normalised 0) and foreground half (normalised 1)
    pred = hr.copy()
    pred[:, :, 5:6] += 3.0  # 100 of the 500 foreground voxels off by 3
    pred[:, :, 6:8] -= 1.0  # 200 off by 1
    pred[:, :, :5] += 50.0  # the background is not counted, however wrong
    bound = np.full(hr.shape, 2.0, np.float32)
    assert scoring.coverage(pred, bound, hr) == pytest.approx(400 / 500)
    assert scoring.coverage(pred, np.full(hr.shape, 0.5, np.float32), hr) == pytest.approx(200 / 500)
    with pytest.raises(ValueError, match="HR grid"):
        scoring.coverage(pred, bound[:-1], hr)


def test_adaptation_extras_bring_the_bound_onto_the_hr_grid_and_keep_the_summary(tmp_path):
    hr = np.zeros((6, 6, 8), np.float32)
    hr[:, :, 4:] = 10.0
    hr_img = nib.Nifti1Image(hr, AFFINE)
    stored = hr[::-1].copy()  # stored flipped along axis 0, its affine saying so: `to_hr_grid` must undo it
    flip = np.array([[-1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    bound = np.zeros_like(hr)
    bound[:3] = 1.0  # covers the HR's first 3 rows of axis 0 (half the foreground) once flipped back
    nib.save(nib.Nifti1Image(stored + 0.5, AFFINE @ flip), tmp_path / "thick_sr.nii.gz")
    nib.save(nib.Nifti1Image(bound[::-1].copy(), AFFINE @ flip), tmp_path / "thick_uncertainty.nii.gz")
    summary = {
        "geometry": {"profile": "box", "thickness": 3.0},
        "slice_profile": {"profile_source": "estimate", "thickness_source": "header"},
        "fallback_to_bspline": False,
        "gain_over_bspline_db": 1.2,
    }
    (tmp_path / "thick_sr.json").write_text(json.dumps(summary))
    sr, _ = scoring.to_hr_grid(nib.load(tmp_path / "thick_sr.nii.gz"), hr_img)  # as run_one brings the SR
    extras = benchmark.adaptation_extras(tmp_path, hr_img, hr, sr)
    assert extras["coverage"] == pytest.approx(0.5)
    assert extras["adapt_summary"] == {
        "profile": "box",
        "thickness": 3.0,
        "profile_source": "estimate",
        "thickness_source": "header",
        "fallback_to_bspline": False,
        "gain_over_bspline_db": 1.2,
    }
    assert benchmark.adaptation_extras(tmp_path / "none", hr_img, hr, sr) == {}  # the other methods: nothing added


def _gap_case(tmp_path, setting="box_t3_x5", profile="box", thickness=3.0):
    folder = tmp_path / "thick" / "S" / setting
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 10), np.float32), np.diag([1.0, 1.0, 0.8, 1.0])), folder / "hr.nii.gz")
    return cases.Case("S", setting, folder, 2, 5.0, profile, {}, thickness)


def test_adapt_is_told_nothing_and_adapt_told_the_profile_and_thickness_in_mm(tmp_path):
    config = tmp_path / "adapt.json"
    config.write_text("{}")
    case = _gap_case(tmp_path)
    blind = drivers.plan_adapting(case, tmp_path / "w", 600, config, told=False)
    told = drivers.plan_adapting(case, tmp_path / "w", 600, config, told=True)
    assert "--slice_profile" not in blind.cmd and "--slice_thickness" not in blind.cmd
    assert "--max_minutes 9" in blind.cmd and blind.output.name == "thick_sr.nii.gz"
    assert told.cmd == blind.cmd + " --slice_profile box --slice_thickness 2.4"  # 3 thin voxels of 0.8 mm
    missing = drivers.plan_adapting(case, tmp_path / "w", 600, tmp_path / "no.json", told=True)
    assert missing.cmd is None and "not available" in missing.unavailable
    assert benchmark.METHODS[-2:] == ("adapt", "adapt_told")


def test_eclare_is_given_the_thickness_not_the_factor(tmp_path, monkeypatch):
    monkeypatch.setattr(drivers, "ensure_peer_env", lambda env, logs: tmp_path / "bin" / "python")
    monkeypatch.setattr(drivers, "ECLARE_ESTIMATE_PROFILE", False)
    cmd = drivers.plan_eclare(_gap_case(tmp_path, "gaussian_t3_x5", "gaussian"), tmp_path / "w", 600).cmd
    assert cmd[cmd.index("--relative-slice-thickness") + 1] == "3"
    assert cmd[cmd.index("--relative-slice-profile-type") + 1] == "gaussian"
    old = _gap_case(tmp_path / "old", "box_x5", "box", None)
    cmd = drivers.plan_eclare(old, tmp_path / "w", 600).cmd
    assert cmd[cmd.index("--relative-slice-thickness") + 1] == "5"
    monkeypatch.setattr(drivers, "ECLARE_ESTIMATE_PROFILE", True)
    assert "--relative-slice-thickness" not in drivers.plan_eclare(old, tmp_path / "w", 600).cmd


def test_report_gives_coverage_budget_and_a_gap_table(tmp_path):
    results = [
        _row("bspline", 22.0, budget_s=600.0, within_budget=True),
        _row("adapt", 23.5, budget_s=600.0, within_budget=True, coverage=0.912),
        _row("bspline", 20.0, setting="box_t3_x5", budget_s=600.0, within_budget=True),
        _row("trilinear", 19.5, setting="box_t3_x5", budget_s=600.0, within_budget=True),
        _row("adapt_told", 21.5, setting="box_t3_x5", budget_s=60.0, within_budget=False, coverage=0.88),
        _row("adapt", 21.0, setting="box_t3_x5", budget_s=600.0, within_budget=True),
        _row("soupgan", setting="gaussian_t3_x5", status="failed", error="boom"),
        _row("bspline", 19.0, setting="gaussian_t3_x5", budget_s=600.0, within_budget=True),
    ]
    for r in results:
        path = tmp_path / "results" / r["scan"] / r["setting"] / r["method"] / "result.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    rows = report.collect(tmp_path)
    md = report.markdown_table(rows).splitlines()
    adapt = next(ln for ln in md if "| gaussian_x4 | adapt |" in ln)
    assert "| 91.2 % |" in adapt and "1.2 min / 10.0 min |" in adapt
    assert "| - |" in next(ln for ln in md if "| gaussian_x4 | bspline |" in ln)
    assert "1.2 min / 1.0 min (over)" in next(ln for ln in md if "| adapt_told |" in ln)
    gap = report.gap_table(rows).strip().splitlines()
    assert gap[2].strip() == "| scan | setting | slice | B-spline PSNR dB | trilinear | soupgan | adapt | adapt_told |"
    assert gap[4] == "| S | box_t3_x5 | box 3 every 5 | 20.00 | 19.50 (-0.50) |  | 21.00 (+1.00) | 21.50 (+1.50) |"
    assert gap[5] == "| S | gaussian_t3_x5 | gaussian 3 every 5 | 19.00 |  | failed |  |  |"
    assert len(gap) == 6  # the setting without a gap is not in it
    assert report.gap_table([r for r in rows if r["setting"] == "gaussian_x4"]) == ""


@pytest.mark.parametrize("driver", ["SAINT_DRIVER", "SOUPGAN_DRIVER"])
def test_driver_scripts_use_only_names_they_define(driver):
    """They run in the peer's own virtualenv, where nothing of the bundle is importable."""
    import io

    from pyflakes.api import check
    from pyflakes.reporter import Reporter

    out = io.StringIO()
    check(getattr(drivers, driver), driver, Reporter(out, out))
    assert "undefined name" not in out.getvalue()
    assert "bundle" not in getattr(drivers, driver)
