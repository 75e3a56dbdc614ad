"""Thick-slice MRI super-resolution, peers side by side: cubic B-spline, trilinear, ECLARE, SAINT, SOUP-GAN, ours.

The common clinical input is a 2-D acquisition: sharp in-plane (~1 mm), thick slices (4-6 mm). This benchmark makes
such scans from real 1 mm scans by simulation, runs every method on them as a user would (each peer through its own
command line or documented Python entry point, in its own virtualenv, on CPU), and scores each output against the
1 mm original. Steps, each runnable alone:

    python scripts/benchmark_peers.py thick  --scans_dir data/real_scans_all --output_dir outputs/peers
    python scripts/benchmark_peers.py run    --output_dir outputs/peers --methods bspline,trilinear,eclare,saint,soupgan,adapt \
        --budget_minutes 10 --settings gaussian_x4
    python scripts/benchmark_peers.py report --output_dir outputs/peers

- `thick`: every scan whose three spacings are at most `max_spacing_mm` gets, along the voxel axis nearest the
  head's superior-inferior axis (an axial 2-D acquisition), thick versions for each factor x slice profile
  (`simulate_thick`): Gaussian (FWHM = slice thickness) or box, then decimation. The HR reference is cropped so its
  length along that axis is a whole number of thick slices, and the thick image's affine puts each thick voxel's
  centre at the centre of the thin voxels it covers, as a real acquisition of that slab would.
- `run`: each method writes its output; `to_hr_grid` brings it onto the HR grid (resampling only when its affine
  or shape differs, which the result records), and `score` gives PSNR and SSIM (bundle.core.metrics, data range
  1) over the whole volume and inside the foreground, after one intensity normalisation for every method: the HR
  reference's 0.5 / 99.5 percentiles mapped to 0 / 1 (the training normalisation), the same linear map applied to
  each output, no clipping. Wall time and the peak resident memory of the whole child process tree are measured
  (`run_measured`). Results go to `<output_dir>/results/<scan>/<setting>/<method>/result.json`, written last and
  atomically: a killed run resumes, skipping finished pairs; a failed method gets a result with its reason.
- `report`: Markdown table + JSON + one PNG figure per scan and setting (the two planes that cross the thick axis).

Modules, one concern each: `simulation` (the thick-slice acquisitions), `scoring` (the HR grid and the metrics),
`measure` (wall time, peak memory, timeout of a child process tree), `envs` (each peer's virtualenv), `cases`
(a simulated acquisition, a method's plan), `interpolation` (the B-spline and trilinear baselines), `drivers`
(ECLARE, SAINT, SOUP-GAN), `benchmark` (the thick and run steps), `report` (table, JSON, figures).
`scripts/benchmark_peers.py` is the command line, and adds the bundle's own per-scan workflow ("adapt").
"""
