"""One geometry for every operator: LR voxel i covers HR voxels s*i .. s*i+s-1, so a blob keeps its world position
through every degradation, its right inverse, the projection, the baselines and the whole inference, whatever the
storage orientation of the file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import INFER, ok, run_bundle, tiny_generator

from bundle.core.geometry import low_resolution_affine, super_resolution_affine
from bundle.data.degradation import DegradationParams, apply_degradation
from bundle.data.operators import APODISATIONS, degrade, project, right_inverse
from bundle.evaluation.protocol import upsample_baseline

SCALES = [(4, 4, 4), (2, 2, 2), (3, 3, 3), (5, 5, 5), (1, 1, 4), (1, 1, 5)]


def blob(shape, centre, sigma=4.0) -> torch.Tensor:
    """(1, X, Y, Z) float64 Gaussian blob centred on `centre` (HR voxel coordinates)."""
    axes = [
        torch.exp(-((torch.arange(n, dtype=torch.float64) - c) ** 2) / (2 * sigma**2))
        for n, c in zip(shape, centre, strict=True)
    ]
    return (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :])[None]


def world_centroid(volume: torch.Tensor, affine: torch.Tensor) -> np.ndarray:
    """The intensity-weighted centre of a (1, X, Y, Z) volume in world coordinates (weights above 5% of the max,
    so that ringing far from the blob does not pull the centre)."""
    v = volume[0].double().clamp_min(0)
    v = torch.where(v > 0.05 * v.max(), v, torch.zeros_like(v))
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in v.shape], indexing="ij")
    voxel = np.array([float((g * v).sum() / v.sum()) for g in grids] + [1.0])
    return (np.asarray(affine, dtype=np.float64) @ voxel)[:3]


HR_AFFINE = torch.tensor([[1.0, 0, 0, -30.0], [0, 1.0, 0, 12.0], [0, 0, 1.0, 4.0], [0, 0, 0, 1]], dtype=torch.float64)


def lr_operators():
    """(name, HR (1, X, Y, Z) -> LR) for every operator the bundle degrades with."""
    ops = [(f"kspace-{a}", lambda x, s, a=a: degrade(x, s, "kspace", apodisation=a)) for a in APODISATIONS]
    ops += [("area", lambda x, s: degrade(x, s, "area")), ("trilinear", lambda x, s: degrade(x, s, "trilinear"))]
    ops += [(f"gaussian-{f}", lambda x, s, f=f: degrade(x, s, "gaussian", fwhm_factor=f)) for f in (0.5, 1.0, 1.5)]
    partial = DegradationParams("kspace", "hamming", partial_fourier=0.75, partial_fourier_axis=2)
    ops += [("kspace-partial-fourier", lambda x, s: apply_degradation(x, s, partial)[1])]
    return ops


@pytest.mark.parametrize("name,operator", lr_operators(), ids=[n for n, _ in lr_operators()])
@pytest.mark.parametrize("scale", SCALES, ids=str)
@pytest.mark.parametrize("size", [60, 64])  # at x4: 15 (odd) and 16 (even) LR voxels
def test_a_blob_keeps_its_world_position_through_every_operator(name, operator, scale, size):
    shape = tuple(size - size % s for s in scale)
    hr = blob(shape, (29.3, 27.6, 31.2), sigma=6.0)  # 1.5 LR voxels at x4: sampled, not aliased
    lr = operator(hr, scale)
    expected = world_centroid(hr, HR_AFFINE)
    got = world_centroid(lr, low_resolution_affine(HR_AFFINE, scale))
    np.testing.assert_allclose(got, expected, atol=0.1)  # HR voxels (1 mm): the old DFT grid was 1.5 off at x4


@pytest.mark.parametrize("operator", ["kspace", "area", "gaussian"])
@pytest.mark.parametrize("scale", [(4, 4, 4), (1, 1, 5), (3, 3, 3)], ids=str)
def test_right_inverse_projection_and_baselines_put_the_blob_back_where_it_was(operator, scale):
    shape = tuple(60 - 60 % s for s in scale)
    hr = blob(shape, (29.3, 27.6, 31.2), sigma=5.0)
    lr = degrade(hr, scale, operator)
    lr_affine = low_resolution_affine(HR_AFFINE, scale)
    sr_affine = super_resolution_affine(lr_affine, scale)
    np.testing.assert_allclose(sr_affine.numpy(), HR_AFFINE.numpy(), atol=1e-12)  # the SR grid is the HR grid
    expected = world_centroid(hr, HR_AFFINE)
    outputs = {
        "right inverse": right_inverse(lr, shape, scale, operator),
        "B-spline right inverse": right_inverse(lr, shape, scale, operator, shape="bspline"),
        "projection of a flat SR": project(torch.full_like(hr, float(hr.mean())), lr, scale, operator),
        "B-spline projection": project(torch.full_like(hr, float(hr.mean())), lr, scale, operator, inverse="bspline"),
        "bspline": upsample_baseline(lr[None].float(), scale, "bspline")[0],
        "trilinear": upsample_baseline(lr[None].float(), scale, "trilinear")[0],
    }
    for what, out in outputs.items():
        np.testing.assert_allclose(world_centroid(out, sr_affine), expected, atol=0.1, err_msg=what)


@pytest.mark.parametrize("name,operator", lr_operators(), ids=[n for n, _ in lr_operators()])
@pytest.mark.parametrize("size", [28, 32])
def test_storage_orientation_cannot_move_the_lr(name, operator, size):
    """Flipping or permuting axes before degrading gives the flipped LR: a file stored L-A-S and one stored R-A-S
    make the same LR once turned to RAS (the DFT grid turned a +1.5 voxel offset into -1.5 under a flip)."""
    g = torch.Generator().manual_seed(0)
    hr = torch.rand((1, size, size, size), generator=g, dtype=torch.float64)
    if "partial" in name:  # partial Fourier keeps one side of k-space: it is not symmetric by design
        pytest.skip("partial Fourier acquires one side of k-space: flips mirror it, as on a scanner")
    lr = operator(hr, (4, 4, 4))
    for dims in ((1,), (2,), (3,), (1, 3)):
        assert torch.allclose(operator(hr.flip(dims), (4, 4, 4)), lr.flip(dims), atol=1e-10), dims
    assert torch.allclose(operator(hr.permute(0, 3, 1, 2), (4, 4, 4)), lr.permute(0, 3, 1, 2), atol=1e-10)


def test_moving_the_lr_affine_by_one_voxel_moves_the_world_centre():
    """The check above can fail: the centroid sees a one-LR-voxel error in an affine (a test that cannot fail is
    not a test)."""
    hr = blob((64, 64, 64), (29.3, 27.6, 31.2))
    lr = degrade(hr, 4, "kspace")
    moved = low_resolution_affine(HR_AFFINE, (4, 4, 4)).clone()
    moved[0, 3] += 4.0
    assert abs(world_centroid(lr, moved)[0] - world_centroid(hr, HR_AFFINE)[0]) > 3.9


@pytest.mark.parametrize("codes", ["LAS", "RAS"])
@pytest.mark.parametrize("operator", ["kspace", "area", "gaussian"])
def test_the_whole_inference_puts_the_sr_of_a_blob_where_the_blob_is(tmp_path, codes, operator):
    """HR blob -> LR by `operator` with its affine -> a NIfTI stored in `codes` -> `run inference` -> SR file: the
    SR's world centre is the blob's within 0.1 HR voxel, projected with the true operator or not. The network's
    last convolution starts at zero, so the SR is the network's B-spline base plus exactly what inference adds."""
    hr = blob((64, 64, 48), (29.3, 27.6, 21.2), sigma=5.0)
    lr = degrade(hr, 4, operator).float()
    lr_affine = low_resolution_affine(HR_AFFINE, (4, 4, 4)).numpy()
    image = nib.Nifti1Image((lr[0].numpy() * 100).astype(np.float32), lr_affine)
    if codes != "RAS":
        image = image.as_reoriented(nib.orientations.axcodes2ornt(codes))
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(image, inp / "blob.nii.gz")
    ckpt = tmp_path / "model.pt"
    torch.save(tiny_generator(residual_base="bspline").state_dict(), ckpt)
    expected = world_centroid(hr, HR_AFFINE)
    for mode in ("off", "project"):
        out = tmp_path / f"out_{mode}"
        ok(run_bundle(
            "run", "inference", "--config_file", INFER, "--input_dir", str(inp), "--output_dir", str(out),
            "--ckpt_path", str(ckpt), "--residual_base", "bspline", "--uncertainty", "0",
            "--consistency", mode, "--consistency_operator", operator, "--roi_size", "[16, 16, 12]",
        ))  # fmt: skip
        sr = nib.load(next(out.glob("blob*_sr.nii.gz")))
        volume = torch.as_tensor(np.asarray(sr.dataobj, dtype=np.float64))[None]
        np.testing.assert_allclose(world_centroid(volume, torch.as_tensor(sr.affine)), expected, atol=0.1)
