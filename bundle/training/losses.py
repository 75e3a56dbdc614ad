"""Losses of the SR-GAN: the random-slice VGG perceptual loss, the generator's content loss, GAN criteria."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bundle.core.choices import ADVERSARIAL_KINDS, SSIM_WINDOW, VGG19_LAYERS
from bundle.core.metrics import SeparableSSIMLoss
from bundle.core.timing import Stopwatch

__all__ = [
    "RandomSlicePerceptualLoss",
    "ContentLoss",
    "AdversarialCriterion",
    "GANObjective",
    "vgg19_features",
    "VGG19_LAYERS",
    "ALL_SLICES",
]

logger = logging.getLogger(__name__)

PLANE_AXES = {"xy": 4, "xz": 3, "yz": 2}  # the axis held fixed to cut each plane from (B, C, X, Y, Z)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ALL_SLICES = "all"  # slices_per_plane value for every slice of every plane (the reference study's "Full")


InputStats = tuple[tuple[float, float, float], tuple[float, float, float]]  # per-channel (mean, std) in [0, 1]


def vgg19_features(layer: str = "conv5_4", weights: str = "imagenet") -> tuple[nn.Sequential, InputStats]:
    """VGG19 feature extractor up to `layer` (before its ReLU), frozen and in eval mode, and its input statistics.

    weights:
    - "imagenet": the original Oxford VGG19, the reference study's network, converted by `make weights`
      (`bundle.core.pretrained`); it expects BGR 0-255 with the Caffe mean subtracted, returned as (mean, std)
      in [0, 1] units so grey slices in [0, 1] are fed as the network was trained.
    - "torchvision": torchvision's IMAGENET1K_V1 from the torch hub cache (retrained weights; ImageNet mean/std).
    - a path to a local `.pth` state dict in torchvision's layout (full VGG19 or its `features`; ImageNet mean/std).
    - "random": no ImageNet features, for tests and timing only.

    Returns (features, (mean, std)); a grey slice g in [0, 1] enters as (g - mean_c) / std_c on each channel c.
    """
    import torchvision

    from bundle.core.pretrained import VGG19_CAFFE_INPUT, load_converted

    if layer not in VGG19_LAYERS:
        raise ValueError(f"unknown VGG19 layer {layer!r}; choose one of {list(VGG19_LAYERS)}")
    stats: InputStats = (IMAGENET_MEAN, IMAGENET_STD)
    model = torchvision.models.vgg19(weights=None)
    if weights == "imagenet":
        model.load_state_dict(load_converted("vgg19"), strict=False)
        stats = VGG19_CAFFE_INPUT
        source = "the Oxford VGG19 (ImageNet), Caffe preprocessing"
    elif weights == "torchvision":
        try:
            model = torchvision.models.vgg19(weights=torchvision.models.VGG19_Weights.IMAGENET1K_V1)
        except Exception as err:  # no silent fallback: say what is missing and how to provide it
            raise RuntimeError(
                "could not load torchvision's VGG19 weights (vgg19-dcbb9e9d.pth) from the torch hub cache "
                f"({torch.hub.get_dir()}/checkpoints) or by download: {err}. Use weights='imagenet' (`make weights`)."
            ) from err
        source = "torchvision IMAGENET1K_V1"
    elif weights == "random":
        source = "random initialisation (not a perceptual metric; for tests and timing only)"
    else:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"VGG19 weights file not found: {weights}")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not any(k.startswith("features.") for k in state):
            state = {f"features.{k}": v for k, v in state.items()}
        missing, _ = model.load_state_dict(state, strict=False)
        if any(k.startswith("features.") for k in missing):
            raise ValueError(f"{weights}: not a VGG19 state dict (missing {missing[:3]}...)")
        source = f"file {weights}"
    logger.info("perceptual loss: VGG19 up to %s, weights from %s", layer, source)
    features = model.features[: VGG19_LAYERS[layer] + 1]
    features.eval()
    for p in features.parameters():
        p.requires_grad_(False)
    return features, stats


def _fold_grey_input(features: nn.Sequential, stats: InputStats) -> nn.Sequential:
    """Fold grey->RGB replication and the input normalisation into the first convolution (1 input channel).

    conv(norm(rgb(g))) = sum_c W_c (g - m_c) / s_c + b = (sum_c W_c / s_c) g + (b - sum_c W_c m_c / s_c).
    Exact inside the image; at the border the zero padding now means grey 0 instead of the input mean.
    """
    first = features[0]
    assert isinstance(first, nn.Conv2d) and first.bias is not None  # VGG's first layer
    mean = torch.tensor(stats[0]).view(1, 3, 1, 1)
    std = torch.tensor(stats[1]).view(1, 3, 1, 1)
    conv = nn.Conv2d(1, first.out_channels, 3, padding=1)  # VGG's first conv: 3x3, padding 1
    assert first.kernel_size == (3, 3) and first.padding == (1, 1)
    with torch.no_grad():
        conv.weight.copy_((first.weight / std).sum(dim=1, keepdim=True))
        assert conv.bias is not None
        conv.bias.copy_(first.bias - (first.weight * mean / std).sum(dim=(1, 2, 3)))
    conv.requires_grad_(False)
    return nn.Sequential(conv, *list(features)[1:]).eval()


def check_slices_per_plane(value: int | str) -> int | str:
    """`slices_per_plane` as the loss uses it: "all" or an int >= 0; one clear error naming the config id.

    None is accepted as "all" (the reference study's and the design's spelling; the bundle runner drops None overrides,
    so configs and the command line use "all").
    """
    if value is None or value == ALL_SLICES:
        return ALL_SLICES
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"slices_per_plane must be 'all' or an integer >= 0 (0 = off), got {value!r}")
    return value


class RandomSlicePerceptualLoss(nn.Module):
    """2.5D VGG perceptual loss on K random slices per plane of a 3D volume (the reference study's method).

    For each plane the same K distinct slice indices are drawn for fake and real; only those slices are
    gathered (no whole-volume copy), batched into one forward, and compared by L1 on VGG19 features.
    Real features are computed under no_grad. The result is the mean over planes.

    Args:
        slices_per_plane: K, or "all" for every slice (the reference study's "Full"). 0 turns the perceptual term off:
            this is the one switch for it (see `enabled`); no VGG is built then.
        planes: any of "xy", "xz", "yz".
        layer: VGG19 layer, "conv5_4" = ESRGAN's features before the last ReLU.
        weights: "imagenet" (the Oxford VGG19, `make weights`), "torchvision", a local file, or "random" (see
            `vgg19_features`).
        max_slices_per_forward: chunk size; above it slices are processed in chunks under activation
            checkpointing, so "Full" keeps a bounded peak memory (at the price of one extra VGG forward).
        fold_input_conv: fold the grey-to-RGB copy and normalisation into the first convolution.
    """

    mean: torch.Tensor  # the weights' input statistics in [0, 1] units, (1, 3, 1, 1) buffers
    std: torch.Tensor

    def __init__(
        self,
        slices_per_plane: int | str = 10,
        planes: Sequence[str] = ("xy", "xz", "yz"),
        layer: str = "conv5_4",
        weights: str = "imagenet",
        max_slices_per_forward: int | None = 64,
        fold_input_conv: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        planes = tuple(planes)
        if not planes or any(p not in PLANE_AXES for p in planes):
            raise ValueError(f"planes must be a non-empty subset of {tuple(PLANE_AXES)}, got {planes}")
        self.slices_per_plane = check_slices_per_plane(slices_per_plane)
        self.planes = planes
        self.max_slices_per_forward = max_slices_per_forward
        self.fold_input_conv = fold_input_conv
        # its own generator: slice draws are reproducible per epoch (see EpochSeedHandler) and do not depend
        # on how much of the global RNG other code consumed
        self.generator = torch.Generator()
        self.reseed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
        self.last_indices: dict[str, torch.Tensor] = {}
        features, stats = (
            vgg19_features(layer, weights) if self.enabled else (nn.Sequential(), (IMAGENET_MEAN, IMAGENET_STD))
        )
        self.features = _fold_grey_input(features, stats) if fold_input_conv and self.enabled else features
        self.register_buffer("mean", torch.tensor(stats[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(stats[1]).view(1, 3, 1, 1), persistent=False)

    @property
    def enabled(self) -> bool:
        """Whether the term is on: `slices_per_plane` 0 is the only way to turn it off."""
        return self.slices_per_plane != 0

    def set_slices_per_plane(self, slices_per_plane: int | str) -> None:
        """Change K during training (the slice schedule); cannot switch the term on or off (no VGG when off)."""
        value = check_slices_per_plane(slices_per_plane)
        if (value == 0) != (self.slices_per_plane == 0):
            raise ValueError("slices_per_plane cannot switch the perceptual term on or off during training")
        self.slices_per_plane = value

    def reseed(self, seed: int) -> None:
        """Restart the slice sampling from `seed`."""
        self.generator.manual_seed(int(seed))

    def train(self, mode: bool = True) -> RandomSlicePerceptualLoss:
        super().train(mode)
        self.features.eval()  # frozen network: always eval mode
        return self

    def state_dict(self, *args, **kwargs):  # the frozen VGG is not part of any checkpoint
        return {}

    def _sample(self, n: int, device: torch.device) -> torch.Tensor:
        k = n if self.slices_per_plane == ALL_SLICES else min(int(self.slices_per_plane), n)
        if k == n:
            return torch.arange(n, device=device)
        return torch.randperm(n, generator=self.generator)[:k].sort().values.to(device)

    @staticmethod
    def _cut(volume: torch.Tensor, axis: int, indices: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) -> (B*K*C, 1, H, W) slices across `axis`; only the K slices are copied."""
        sl = volume.index_select(axis, indices)
        sl = sl.movedim(axis, 1)  # (B, K, C, H, W)
        return sl.reshape(-1, 1, sl.shape[-2], sl.shape[-1])

    def _to_vgg_input(self, grey: torch.Tensor) -> torch.Tensor:
        if self.fold_input_conv:
            return grey
        return (grey.expand(-1, 3, -1, -1) - self.mean) / self.std

    def _distance(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Mean |VGG(fake) - VGG(real)| over the feature elements of one batch of slices."""
        with torch.no_grad():
            real_feat = self.features(self._to_vgg_input(real))
        fake_feat = self.features(self._to_vgg_input(fake))
        return F.l1_loss(fake_feat.float(), real_feat.float())

    def _plane_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Mean distance over the slices of one plane; in checkpointed chunks when there are many.

        All slices of a plane have the same size, so the mean is the slice-weighted mean of chunk means.
        """
        n = fake.shape[0]
        chunk = self.max_slices_per_forward or n
        if n <= chunk:
            return self._distance(fake, real)
        total = fake.new_zeros((), dtype=torch.float32)
        for start in range(0, n, chunk):
            f, r = fake[start : start + chunk], real[start : start + chunk]
            if torch.is_grad_enabled() and f.requires_grad:
                # activations are recomputed in backward: peak memory is one chunk's, not all slices'
                total = total + checkpoint(self._distance, f, r, use_reentrant=False) * f.shape[0]
            else:
                total = total + self._distance(f, r) * f.shape[0]
        return total / n

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Perceptual distance of two HR volumes.

        Args:
            fake: generator output (B, C, X, Y, Z), gradients flow through it.
            real: HR target of the same shape (treated as a constant).

        Returns:
            scalar: mean over planes of the mean L1 feature distance of the sampled slices (0 when off).
        """
        if fake.shape != real.shape or fake.dim() != 5:
            raise ValueError(f"expected two (B, C, X, Y, Z) tensors of equal shape, got {fake.shape}, {real.shape}")
        if not self.enabled:
            return fake.new_zeros(())
        losses = []
        for plane in self.planes:
            axis = PLANE_AXES[plane]
            indices = self._sample(fake.shape[axis], fake.device)
            self.last_indices[plane] = indices
            losses.append(self._plane_loss(self._cut(fake, axis, indices), self._cut(real.detach(), axis, indices)))
        return torch.stack(losses).mean()


class AdversarialCriterion:
    """GAN criteria on logits: "bce" (default), "lsgan" (least squares) or "ragan" (ESRGAN's relativistic average).

    Both methods take both logits so that the relativistic form, which compares each with the other's mean,
    fits the same interface. Computed in float32 for stability under autocast.
    """

    KINDS = ADVERSARIAL_KINDS

    def __init__(self, kind: str = "bce") -> None:
        if kind not in self.KINDS:
            raise ValueError(f"adversarial criterion must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind

    @property
    def relativistic(self) -> bool:
        """The generator loss then needs the real logits too."""
        return self.kind == "ragan"

    def _pair(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Loss that pushes `pos` logits to 'real' and `neg` logits to 'fake'."""
        pos, neg = pos.float(), neg.float()
        if self.kind == "ragan":
            pos, neg = pos - neg.mean(), neg - pos.mean()
        if self.kind == "lsgan":
            return 0.5 * (((pos - 1) ** 2).mean() + (neg**2).mean())
        return 0.5 * (
            F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
            + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        )

    def generator_loss(self, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
        if self.relativistic:
            if real_logits is None:
                raise ValueError("the relativistic criterion needs the real logits in the generator step")
            return self._pair(fake_logits, real_logits.detach())
        fake_logits = fake_logits.float()
        if self.kind == "lsgan":
            return 0.5 * ((fake_logits - 1) ** 2).mean()
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return self._pair(real_logits, fake_logits)


class ContentLoss(nn.Module):
    """Content loss of the generator: w_mse * MSE + w_ssim * (1 - SSIM3D) + w_p * perceptual.

    The adversarial term is added by the trainer (it needs the discriminator). Returns a dict of the
    weighted total and each unweighted term so every term can be logged. SSIM runs in float32 with
    autocast off: in bf16 its Gaussian convolutions lose two digits.
    """

    def __init__(
        self,
        perceptual: RandomSlicePerceptualLoss | None = None,
        mse_weight: float = 1.0,
        ssim_weight: float = 1.0,
        perceptual_weight: float = 0.2,
        ssim_kernel_size: int = SSIM_WINDOW,
    ) -> None:
        super().__init__()
        self.perceptual = perceptual
        if perceptual is not None and perceptual.enabled and perceptual_weight <= 0:
            raise ValueError(
                f"perceptual_weight is {perceptual_weight} while slices_per_plane is {perceptual.slices_per_plane}: "
                "set slices_per_plane 0 to turn the perceptual term off (the one switch for it)"
            )
        self.mse_weight, self.ssim_weight, self.perceptual_weight = mse_weight, ssim_weight, perceptual_weight
        self.ssim = SeparableSSIMLoss(data_range=1.0, win_size=ssim_kernel_size)
        self.perceptual_timer = Stopwatch()

    def state_dict(self, *args, **kwargs):  # nothing trainable; keeps the frozen VGG out of checkpoints
        return {}

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """Content terms of one generator step.

        Args:
            fake: generator output (B, C, X, Y, Z); real: the HR target, same shape.

        Returns:
            {"total": weighted sum (scalar, with grad), "mse", "ssim" (the similarity, not the loss),
            "ssim_loss", "perceptual" (0 when off)}.
        """
        win = self.ssim.kernel_size
        if any(n < k for n, k in zip(fake.shape[2:], win, strict=True)):
            raise ValueError(
                f"patch {list(fake.shape[2:])} is smaller than the SSIM window {list(win)}: "
                "use larger patches or a smaller ssim_kernel_size"
            )
        with torch.autocast(device_type=fake.device.type, enabled=False):
            mse = F.mse_loss(fake.float(), real.float())
            ssim_loss = self.ssim(fake.float(), real.float())
        terms = {"mse": mse, "ssim": 1.0 - ssim_loss.detach(), "ssim_loss": ssim_loss}
        total = self.mse_weight * mse + self.ssim_weight * ssim_loss
        if self.perceptual is not None and self.perceptual.enabled:
            with self.perceptual_timer(fake.device):
                perceptual = self.perceptual(fake, real)
            total = total + self.perceptual_weight * perceptual
        else:
            perceptual = fake.new_zeros(())
        terms["perceptual"] = perceptual
        terms["total"] = total
        return terms


@dataclass
class GANObjective:
    """The generator's loss L = content + w * adversarial, and from which iteration the adversarial term counts.

    One object because the four settings only mean something together: the weight scales the criterion's term,
    the start delays it (a pure content-loss warm-up, during which the discriminator is not trained either), and
    the content loss is the rest of L. The trainer takes it whole (`objective`), so its config names the loss in
    one place, next to the networks and optimisers it trains. Config ids: content_loss, adversarial_loss,
    adversarial_weight, adversarial_start_iteration (configs/train.json).
    """

    content_loss: ContentLoss
    adversarial_loss: AdversarialCriterion | str = "bce"  # a criterion, or its kind (`AdversarialCriterion.KINDS`)
    adversarial_weight: float = 0.001  # w; 0 turns the adversarial term and the discriminator step off
    adversarial_start_iteration: int = 0  # the term counts from the iteration after this one
    criterion: AdversarialCriterion = field(init=False, repr=False)

    def __post_init__(self) -> None:
        loss = self.adversarial_loss
        self.criterion = AdversarialCriterion(loss) if isinstance(loss, str) else loss
        self.adversarial_weight = float(self.adversarial_weight)
        self.adversarial_start_iteration = int(self.adversarial_start_iteration)

    def adversarial_active(self, iteration: int) -> bool:
        """Whether iteration `iteration` (1-based, ignite's count) adds the adversarial term and trains D."""
        return self.adversarial_weight > 0 and iteration > self.adversarial_start_iteration

    def generator_loss(self, content: torch.Tensor, adversarial: torch.Tensor) -> torch.Tensor:
        """L = content + w * adversarial (scalars; adversarial is 0 while the term is not active)."""
        return content + self.adversarial_weight * adversarial
