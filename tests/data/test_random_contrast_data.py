"""bundle/data/demo_data.py `--contrast random`: SynthSR-style domain randomisation from tissue probability maps."""

import numpy as np
import pytest


def small_maps(n: int = 24) -> dict[str, np.ndarray]:
    """A ball of white matter inside a shell of grey matter inside CSF: the probability maps the template gives."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32)] * 3, indexing="ij"), -1)
    r = np.sqrt(((grid - (n - 1) / 2) ** 2).sum(-1)) / (n / 2)
    wm = (r < 0.45).astype(np.float32)
    gm = ((r >= 0.45) & (r < 0.7)).astype(np.float32)
    mask = (r < 0.85).astype(np.float32)
    return {"t1": 0.5 * mask + 0.5 * wm, "gm": gm, "wm": wm, "mask": mask}


def test_spaced_affine_puts_each_coarse_voxel_at_the_centre_of_the_fine_voxels_it_covers():
    from bundle.data.demo_data import spaced_affine

    fine = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
    coarse = spaced_affine(fine, np.array([2.0, 2.0, 1.5]))
    # coarse voxel (1, 0, 2) spans fine index coordinates [1.5, 3.5), [-0.5, 1.5), [2.5, 4.0) (fine voxel j spans
    # [j - 0.5, j + 0.5)): centres 2.5, 0.5, 3.25 (hand-computed)
    assert np.allclose(coarse @ [1, 0, 2, 1], fine @ [2.5, 0.5, 3.25, 1])
    assert np.allclose(np.abs(np.diag(coarse)[:3]), [2.0, 2.0, 1.5])


def test_resample_to_spacing_keeps_the_field_of_view_and_the_intensity_of_flat_regions():
    from bundle.data.demo_data import resample_to_spacing

    img = np.full((40, 40, 30), 3.0, np.float32)
    out = resample_to_spacing(img, 2.0)
    assert out.shape == (20, 20, 15)
    assert np.allclose(out[5:15, 5:15, 4:11], 3.0, atol=1e-4)  # inside, away from the zero-padded border
    assert resample_to_spacing(img, 1.0) is img


def test_random_cases_have_four_distinct_contrasts_a_drawn_voxel_size_and_matching_labels():
    from bundle.data.demo_data import TISSUES, synthesise_random_case

    maps = small_maps()
    image, labels, spacing = synthesise_random_case(maps, np.random.default_rng(3), (1.5, 2.0), 4)
    assert image.ndim == 4 and image.shape[-1] == 4 and labels.shape == image.shape[:3]
    assert np.all((spacing >= 1.4) & (spacing <= 2.1)) and np.allclose(spacing * image.shape[:3], 24)
    assert set(np.unique(labels)) <= {int(k) for k in TISSUES} and len(np.unique(labels)) >= 3
    assert np.isfinite(image).all() and image.min() >= 0
    # each channel gives the tissues their own intensities: the channels are not rescaled copies of one another
    wm, gm = labels == 3, labels == 2
    ratios = [image[..., c][wm].mean() / image[..., c][gm].mean() for c in range(4)]
    assert max(ratios) - min(ratios) > 0.1
    again, _, _ = synthesise_random_case(maps, np.random.default_rng(3), (1.5, 2.0), 4)
    other, _, _ = synthesise_random_case(maps, np.random.default_rng(4), (1.5, 2.0), 4)
    assert np.array_equal(image, again) and (other.shape != image.shape or not np.array_equal(other, image))


def test_bad_contrast_or_spacing_range_is_refused_before_anything_is_written(tmp_path):
    from bundle.data.demo_data import make_demo_data

    with pytest.raises(ValueError, match="contrast must be one of"):
        make_demo_data(str(tmp_path / "a"), contrast="synthetic")
    with pytest.raises(ValueError, match="spacing_range"):
        make_demo_data(str(tmp_path / "b"), contrast="random", spacing_range=(0.5, 2.0))
    assert not list(tmp_path.iterdir())
