import pytest
import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from monai.metrics import SSIMMetric

from bundle.core.metrics import SeparableSSIMLoss, mse, psnr, ssim_3d
from bundle.training.losses import VGG19_LAYERS, AdversarialCriterion, ContentLoss, RandomSlicePerceptualLoss

PLANE_AXES = {"xy": 4, "xz": 3, "yz": 2}


def loss(**kw) -> RandomSlicePerceptualLoss:
    torch.manual_seed(0)
    return RandomSlicePerceptualLoss(layer="conv2_2", weights="random", **kw)


def naive_full_loss(module: RandomSlicePerceptualLoss, fake, real) -> torch.Tensor:
    """Every slice of every plane, one at a time, VGG on 3-channel ImageNet-normalised slices."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    per_plane = []
    for axis in PLANE_AXES.values():
        dists = []
        for i in range(fake.shape[axis]):
            f = fake.select(axis, i).repeat(1, 3, 1, 1)
            r = real.select(axis, i).repeat(1, 3, 1, 1)
            dists.append(F.l1_loss(module.features((f - mean) / std), module.features((r - mean) / std)))
        per_plane.append(torch.stack(dists).mean())
    return torch.stack(per_plane).mean()


def test_layer_indices_match_torchvision_vgg19():
    assert VGG19_LAYERS["conv1_1"] == 0 and VGG19_LAYERS["conv5_4"] == 34 and VGG19_LAYERS["conv3_4"] == 16


@pytest.mark.parametrize("chunk", [None, 5])
def test_full_equals_naive_loop_over_every_slice(chunk):
    module = loss(slices_per_plane="all", max_slices_per_forward=chunk)
    fake, real = torch.rand(1, 1, 12, 10, 8), torch.rand(1, 1, 12, 10, 8)
    assert torch.allclose(module(fake, real), naive_full_loss(module, fake, real), rtol=1e-4)


def test_chunked_full_has_same_gradient():
    a, b = (
        loss(slices_per_plane="all", max_slices_per_forward=None),
        loss(slices_per_plane="all", max_slices_per_forward=3),
    )
    b.features = a.features
    real = torch.rand(1, 1, 10, 10, 8)
    f1, f2 = torch.rand(1, 1, 10, 10, 8, requires_grad=True), None
    f2 = f1.detach().clone().requires_grad_()
    a(f1, real).backward()
    b(f2, real).backward()
    assert torch.allclose(f1.grad, f2.grad, rtol=1e-4, atol=1e-9)


def test_k_distinct_slices_per_plane_shared_by_fake_and_real():
    """Fake and real are compared on the same k distinct slices of each plane: a fake that differs from the real
    only in a voxel outside every chosen slice costs exactly nothing (had fake and real been cut at different
    slices of this random volume, it would cost), one inside a chosen slice costs."""
    real = torch.rand(1, 1, 12, 10, 8)
    module = loss(slices_per_plane=3, seed=0)
    assert module(real.clone(), real) == 0
    chosen = {plane: set(idx.tolist()) for plane, idx in module.last_indices.items()}
    assert {k: len(v) for k, v in chosen.items()} == {"xy": 3, "xz": 3, "yz": 3}
    # the same seed draws the same slices again; "yz" slices run across x, "xz" across y, "xy" across z
    x = next(i for i in range(12) if i not in chosen["yz"])
    y = next(i for i in range(10) if i not in chosen["xz"])
    z = next(i for i in range(8) if i not in chosen["xy"])
    outside = real.clone()
    outside[0, 0, x, y, z] += 1.0
    assert loss(slices_per_plane=3, seed=0)(outside, real) == 0
    inside = real.clone()
    inside[0, 0, x, y, min(chosen["xy"])] += 1.0
    assert loss(slices_per_plane=3, seed=0)(inside, real) > 0


def test_k_larger_than_plane_uses_every_slice():
    module = loss(slices_per_plane=50)
    module(torch.rand(1, 1, 6, 5, 4), torch.rand(1, 1, 6, 5, 4))
    assert module.last_indices["xy"].tolist() == [0, 1, 2, 3]


def test_real_features_carry_no_grad_and_vgg_is_frozen():
    module = loss(slices_per_plane=2)
    seen = []
    module.features.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    real = torch.rand(1, 1, 8, 8, 8, requires_grad=True)
    fake = torch.rand(1, 1, 8, 8, 8, requires_grad=True)
    module.train()
    module(fake, real).backward()
    assert seen == [False, True] * 3  # real under no_grad, fake with grad, per plane
    assert real.grad is None and fake.grad is not None
    assert not module.features.training
    assert not any(p.requires_grad for p in module.features.parameters())


def test_zero_slices_is_off():
    module = RandomSlicePerceptualLoss(slices_per_plane=0, weights="imagenet")  # builds no VGG, loads nothing
    assert module(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)) == 0
    assert len(module.features) == 0


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match="planes"):
        RandomSlicePerceptualLoss(planes=("ab",), weights="random")
    with pytest.raises(ValueError, match="layer"):
        RandomSlicePerceptualLoss(layer="conv9_9", weights="random")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        RandomSlicePerceptualLoss(weights="/nowhere/missing.pth")
    with pytest.raises(ValueError, match="shape"):
        loss()(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9))


def test_weights_from_local_file(tmp_path):
    import torchvision

    torch.manual_seed(1)
    vgg = torchvision.models.vgg19(weights=None)
    path = tmp_path / "vgg19-local.pth"
    torch.save(vgg.state_dict(), path)
    module = RandomSlicePerceptualLoss(layer="conv1_2", weights=str(path))
    assert torch.equal(module.features[0].weight, vgg.features[0].weight)
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a VGG19"):
        RandomSlicePerceptualLoss(weights=str(bad))


def test_imagenet_weights_missing_is_an_error_not_a_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("MRI_SR_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run `make weights`"):
        RandomSlicePerceptualLoss(weights="imagenet")

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError, match="vgg19-dcbb9e9d.pth"):
        RandomSlicePerceptualLoss(weights="torchvision")


def test_imagenet_weights_come_from_the_cache_with_caffe_input(monkeypatch, tmp_path):
    """`imagenet` is the Oxford VGG19 of `make weights`: BGR 0-255 minus the Caffe mean, i.e. (g - m/255) * 255."""
    import torchvision

    from bundle.core.pretrained import converted_path

    monkeypatch.setenv("MRI_SR_WEIGHTS_DIR", str(tmp_path))
    torch.manual_seed(2)
    vgg = torchvision.models.vgg19(weights=None)
    torch.save({f"features.{k}": v for k, v in vgg.features.state_dict().items()}, converted_path("vgg19"))
    module = RandomSlicePerceptualLoss(layer="conv1_2", weights="imagenet")
    assert torch.equal(module.features[0].weight, vgg.features[0].weight)
    fed = (0.5 - module.mean) / module.std  # a grey 0.5 on the three channels, as the loss feeds it
    assert torch.allclose(fed.flatten(), torch.tensor([127.5 - 103.939, 127.5 - 116.779, 127.5 - 123.68]), atol=1e-3)


def test_folded_input_conv_matches_inside_the_image():
    """Folding the grey-to-RGB copy and the ImageNet normalisation into the first convolution gives the same
    features inside the image (the borders differ: zero padding of raw vs normalised values), and the folded
    loss runs its one-channel forward on volumes to nearly the plain loss."""
    torch.manual_seed(0)
    plain = RandomSlicePerceptualLoss(slices_per_plane="all", layer="conv1_2", weights="random")
    torch.manual_seed(0)
    folded = RandomSlicePerceptualLoss(slices_per_plane="all", layer="conv1_2", weights="random", fold_input_conv=True)
    assert folded.features[0].in_channels == 1 and plain.features[0].in_channels == 3
    x = torch.rand(4, 1, 16, 16)
    rgb = (x.expand(-1, 3, -1, -1) - plain.mean) / plain.std
    assert torch.allclose(folded.features[0](x)[..., 1:-1, 1:-1], plain.features[0](rgb)[..., 1:-1, 1:-1], atol=1e-5)
    fake, real = torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12)
    a, b = plain(fake, real), folded(fake, real)
    assert torch.isfinite(b) and b > 0
    assert abs(float(a) - float(b)) < 0.1 * float(a)  # only the borders of each slice differ


def test_separable_ssim_equals_monai():
    x, y = torch.rand(2, 1, 16, 14, 12), torch.rand(2, 1, 16, 14, 12)
    y = 0.7 * x + 0.3 * y
    ours = ssim_3d(x, y)
    monai = SSIMMetric(spatial_dims=3, data_range=1.0)(x, y).flatten()
    assert torch.allclose(ours, monai, atol=1e-5)
    assert torch.allclose(SeparableSSIMLoss()(x, y), SSIMLoss(spatial_dims=3, data_range=1.0)(x, y), atol=1e-5)


def test_mse_psnr_against_hand_computation():
    x = torch.zeros(1, 1, 4, 4, 4)
    y = torch.zeros(1, 1, 4, 4, 4)
    y[0, 0, 0, 0, :2] = 0.4  # two voxels off by 0.4: mse = 2 * 0.16 / 64
    assert torch.isclose(mse(x, y), torch.tensor(0.005))
    assert torch.isclose(psnr(x, y), 10 * torch.log10(torch.tensor(1 / 0.005)))
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[0, 0, 0, 0, :4] = True  # 4 voxels, 2 of them off
    assert torch.isclose(mse(x, y, mask), torch.tensor(0.08))
    z = torch.rand(1, 1, 12, 12, 12)
    assert torch.isclose(ssim_3d(z, z), torch.tensor(1.0))


def test_masked_ssim_averages_only_inside_mask():
    x = torch.rand(1, 1, 14, 14, 14)
    y = x.clone()
    y[..., 7:] = torch.rand(1, 1, 14, 14, 7)
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., 5, 5, 5] = True  # maps to SSIM-map voxel (0, 0, 0), whose window covers only z < 11
    assert ssim_3d(x, y, mask=mask) > ssim_3d(x, y)


def test_adversarial_criteria_values():
    real, fake = torch.tensor([[2.0], [1.0]]), torch.tensor([[-1.0], [0.0]])
    bce = AdversarialCriterion("bce")
    assert torch.isclose(bce.generator_loss(fake), F.softplus(-fake).mean())
    expected_d = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
    assert torch.isclose(bce.discriminator_loss(real, fake), expected_d)
    ls = AdversarialCriterion("lsgan")
    assert torch.isclose(ls.discriminator_loss(real, fake), 0.5 * (((real - 1) ** 2).mean() + (fake**2).mean()))
    ra = AdversarialCriterion("ragan")
    fr, ff = real - fake.mean(), fake - real.mean()
    assert torch.isclose(ra.discriminator_loss(real, fake), 0.5 * (F.softplus(-fr).mean() + F.softplus(ff).mean()))
    assert torch.isclose(ra.generator_loss(fake, real), 0.5 * (F.softplus(-ff).mean() + F.softplus(fr).mean()))
    with pytest.raises(ValueError, match="real logits"):
        ra.generator_loss(fake)
    with pytest.raises(ValueError, match="criterion"):
        AdversarialCriterion("wgan")


def test_generator_loss_terms_and_weights():
    perceptual = loss(slices_per_plane=2)
    content = ContentLoss(perceptual, perceptual_weight=0.5)
    fake, real = torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12)
    terms = content(fake, real)
    expected = terms["mse"] + (1 - terms["ssim"]) + 0.5 * terms["perceptual"]
    assert torch.isclose(terms["total"], expected, atol=1e-6)
    assert terms["perceptual"] > 0
    with pytest.raises(ValueError, match="SSIM window"):
        content(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))


def test_perceptual_term_is_switched_off_only_by_zero_slices():
    off = loss(slices_per_plane=0)
    assert not off.enabled and len(off.features) == 0  # no VGG is built when off
    fake, real = torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12)
    terms = ContentLoss(off, perceptual_weight=0.2)(fake, real)
    assert terms["perceptual"] == 0 and torch.isclose(terms["total"], terms["mse"] + 1 - terms["ssim"])
    with pytest.raises(ValueError, match="slices_per_plane 0"):
        ContentLoss(loss(slices_per_plane=2), perceptual_weight=0.0)
    assert loss(slices_per_plane=None).slices_per_plane == "all"  # the reference study's spelling of every slice
    for bad in (-1, "every", 2.5, True):
        with pytest.raises(ValueError, match="slices_per_plane must be 'all' or an integer"):
            loss(slices_per_plane=bad)
    every = loss(slices_per_plane="all")
    every(torch.rand(1, 1, 6, 5, 7), torch.rand(1, 1, 6, 5, 7))
    assert every.last_indices["xy"].tolist() == list(range(7))


def test_separable_ssim_metric_equals_monai_ssim_metric():
    from monai.metrics import SSIMMetric

    from bundle.core.metrics import SeparableSSIMMetric

    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 24, 20, 16), torch.rand(2, 1, 24, 20, 16)
    y = 0.6 * x + 0.4 * y  # correlated, so SSIM is far from 0
    ours, theirs = SeparableSSIMMetric(data_range=1.0), SSIMMetric(spatial_dims=3, data_range=1.0)
    ours(x, y)
    theirs(x, y)
    assert torch.allclose(ours.aggregate(), theirs.aggregate(), atol=1e-5)
    assert ours.aggregate().item() > 0.3
