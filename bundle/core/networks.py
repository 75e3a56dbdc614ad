"""Generator and discriminator networks for 3D super-resolution.

`RRDBNet3D` is ESRGAN's Residual-in-Residual Dense Block network written with 3D convolutions and
upsampled by voxel shuffle. `Discriminator3D` is the 3D counterpart of ESRGAN's VGG-style critic.
Both are TorchScript-compatible so that `monai.bundle ckpt_export` can script them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bundle.core.bspline import BSplineUpsample3D
from bundle.core.choices import RESIDUAL_BASES
from bundle.core.geometry import ensure_scale3

__all__ = ["RRDBNet3D", "Discriminator3D", "voxel_shuffle", "upsampling_stages"]


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


def upsampling_stages(scale: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """Split a per-axis scale into voxel-shuffle stages of prime factors.

    x4 becomes two x2 stages: one x4 stage would need C * 4^3 channels (4,096 for 64 features).
    (4, 4, 1) becomes [(2, 2, 1), (2, 2, 1)].
    """
    per_axis = [_prime_factors(s) for s in scale]
    n_stages = max(len(f) for f in per_axis)
    return [tuple(f[i] if i < len(f) else 1 for f in per_axis) for i in range(n_stages)]  # type: ignore[misc]


def voxel_shuffle(x: torch.Tensor, factors: list[int]) -> torch.Tensor:
    """Rearrange (B, C*r1*r2*r3, D, H, W) into (B, C, D*r1, H*r2, W*r3): the 3D pixel shuffle.

    Channel c*r1*r2*r3 + i*r2*r3 + j*r3 + k lands at sub-voxel (i, j, k) of output channel c.
    """
    r1, r2, r3 = factors[0], factors[1], factors[2]
    b, c, d, h, w = x.shape
    out_c = c // (r1 * r2 * r3)
    x = x.reshape(b, out_c, r1, r2, r3, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, out_c, d * r1, h * r2, w * r3)


class VoxelShuffleUpsample(nn.Module):
    """Convolution to C*r1*r2*r3 channels then voxel shuffle, ICNR-initialised (starts as nearest upsampling)."""

    def __init__(self, channels: int, factors: tuple[int, int, int]) -> None:
        super().__init__()
        self.factors = [int(f) for f in factors]
        n_sub = factors[0] * factors[1] * factors[2]
        self.conv = nn.Conv3d(channels, channels * n_sub, kernel_size=3, padding=1)
        self._icnr_init(n_sub)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    @torch.no_grad()
    def _icnr_init(self, n_sub: int) -> None:
        # ICNR (Aitken et al. 2017): every sub-voxel group shares one kernel, so the shuffled output is a
        # nearest-neighbour upsampling at initialisation and free of checkerboard artefacts.
        out_c, in_c = self.conv.out_channels // n_sub, self.conv.in_channels
        base = torch.empty(out_c, in_c, 3, 3, 3)
        nn.init.kaiming_normal_(base, a=0.2)
        self.conv.weight.copy_(base.repeat_interleave(n_sub, dim=0))
        assert self.conv.bias is not None  # built with bias=True
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, C, D*r1, H*r2, W*r3) for this stage's factors (r1, r2, r3)."""
        return self.act(voxel_shuffle(self.conv(x), self.factors))


class ResidualDenseBlock3D(nn.Module):
    """Five densely connected 3D convolutions with a scaled residual (ESRGAN's RDB)."""

    def __init__(self, features: int, growth: int, residual_scale: float = 0.2) -> None:
        super().__init__()
        convs = [nn.Conv3d(features + i * growth, growth, 3, padding=1) for i in range(4)]
        convs.append(nn.Conv3d(features + 4 * growth, features, 3, padding=1))
        self.convs = nn.ModuleList(convs)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        self.residual_scale = residual_scale
        for conv in convs:  # ESRGAN's small initialisation keeps the deep residual stack stable
            nn.init.kaiming_normal_(conv.weight, a=0.2)
            conv.weight.data.mul_(0.1)
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, D, H, W) -> same shape: x + residual_scale * dense block(x)."""
        features = [x]
        out = x
        n = len(self.convs)
        for i, conv in enumerate(self.convs):
            out = conv(torch.cat(features, dim=1))
            if i < n - 1:
                out = self.act(out)
                features.append(out)
        return x + self.residual_scale * out


class RRDB3D(nn.Module):
    """Three residual dense blocks inside a scaled residual connection."""

    def __init__(self, features: int, growth: int, residual_scale: float = 0.2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualDenseBlock3D(features, growth, residual_scale) for _ in range(3)])
        self.residual_scale = residual_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, D, H, W) -> same shape: three dense blocks with a scaled residual."""
        return x + self.residual_scale * self.blocks(x)


class RRDBNet3D(nn.Module):
    """3D RRDB generator: first conv -> RRDB trunk (+ long skip) -> voxel-shuffle upsampling -> HR convs.

    Args:
        in_channels / out_channels: image channels.
        features: trunk width (64 in ESRGAN and the reference study).
        growth: channels added by each dense convolution (32).
        num_blocks: RRDB blocks in the trunk (the reference study uses 10).
        scale: 2, 4 or a per-axis triple such as (4, 4, 1) for thick-slice scans.
        residual_base: what the network learns a residual over (`bundle.core.choices.RESIDUAL_BASES`):
            "none" (output = net(lr)), "trilinear" (net(lr) + trilinear(lr)) or "bspline" (net(lr) + cubic
            B-spline(lr), `bundle.core.bspline.BSplineUpsample3D`, the evaluation's strongest baseline). With a base
            the last convolution starts at zero, so the untrained network is the base; it converges much sooner
            on small budgets. No base has learned weights or state_dict entries: checkpoints of every base have
            the same keys, so the base a checkpoint was trained with must be named again when it is loaded.

    The output is exactly `scale` times the input along each axis, for any input size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: int = 64,
        growth: int = 32,
        num_blocks: int = 10,
        scale: int | Sequence[int] = 4,
        residual_base: str = "none",
    ) -> None:
        super().__init__()
        if num_blocks < 1 or features < 1 or growth < 1:
            raise ValueError("num_blocks, features and growth must be positive")
        if residual_base not in RESIDUAL_BASES:
            raise ValueError(f"residual_base must be one of {RESIDUAL_BASES}, got {residual_base!r}")
        scale3 = ensure_scale3(scale)
        self.scale = [int(s) for s in scale3]
        self.residual_base = residual_base
        self.conv_first = nn.Conv3d(in_channels, features, 3, padding=1)
        self.trunk = nn.Sequential(*[RRDB3D(features, growth) for _ in range(num_blocks)])
        self.conv_trunk = nn.Conv3d(features, features, 3, padding=1)
        self.upsample = nn.Sequential(*[VoxelShuffleUpsample(features, f) for f in upsampling_stages(scale3)])
        self.conv_hr = nn.Conv3d(features, features, 3, padding=1)
        self.conv_last = nn.Conv3d(features, out_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)
        # built for every base so that TorchScript sees one attribute type; its kernels are not in the state_dict
        self.bspline = BSplineUpsample3D(scale3)
        if residual_base != "none":
            # start as the base: the network then only has to learn the missing detail
            nn.init.zeros_(self.conv_last.weight)
            assert self.conv_last.bias is not None
            nn.init.zeros_(self.conv_last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, X, Y, Z) LR -> (B, out_channels, sx*X, sy*Y, sz*Z) SR."""
        if x.dim() != 5:
            raise ValueError(f"expected a 5-D tensor (batch, channel, x, y, z), got shape {list(x.shape)}")
        feat = self.conv_first(x)
        feat = feat + self.conv_trunk(self.trunk(feat))
        out = self.conv_last(self.act(self.conv_hr(self.upsample(feat))))
        if self.residual_base == "trilinear":
            size = [x.shape[2] * self.scale[0], x.shape[3] * self.scale[1], x.shape[4] * self.scale[2]]
            out = out + F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        elif self.residual_base == "bspline":
            out = out + self.bspline(x)  # float32 (as the trilinear base): a bf16 residual does not round it
        return out


def _norm3d(norm: str, channels: int) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'instance', 'batch' or 'none', got {norm!r}")


class Discriminator3D(nn.Module):
    """VGG-style 3D discriminator returning real/fake logits.

    Pairs of 3x3x3 convolutions (stride 1 then stride 2) double the width every pair, up to `max_features`.
    `patch=False` (ESRGAN-style) pools globally and returns one logit per volume, shape (B, 1), so any patch
    size works. `patch=True` (PatchGAN) returns a logit map (B, 1, d, h, w), one per receptive field.

    The default normalisation is instance norm: per-sample statistics, so the trainer's joint forward of
    reals and fakes gives each the result of a separate call (batch norm would mix them).
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: int = 64,
        num_stages: int = 4,
        max_features: int = 512,
        norm: str = "instance",
        patch: bool = False,
    ) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError("num_stages must be at least 1")
        layers: list[nn.Module] = [nn.Conv3d(in_channels, features, 3, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = features
        for stage in range(num_stages):
            out_c = min(features * 2**stage, max_features)
            if stage > 0:
                layers += [nn.Conv3d(channels, out_c, 3, padding=1, bias=False), _norm3d(norm, out_c)]
                layers += [nn.LeakyReLU(0.2, inplace=True)]
                channels = out_c
            layers += [nn.Conv3d(channels, out_c, 4, stride=2, padding=1, bias=False), _norm3d(norm, out_c)]
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            channels = out_c
        self.features = nn.Sequential(*layers)
        self.patch = patch
        if patch:
            self.head = nn.Sequential(nn.Conv3d(channels, 1, 3, padding=1))
        else:
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool3d(1),
                nn.Flatten(1),
                nn.Linear(channels, 100),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(100, 1),
            )
        self.min_size = 2**num_stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, X, Y, Z) with every axis >= 2**num_stages -> logits (B, 1), or (B, 1, d, h, w) with patch=True."""
        if x.dim() != 5:
            raise ValueError(f"expected a 5-D tensor (batch, channel, x, y, z), got shape {list(x.shape)}")
        if min(x.shape[2], x.shape[3], x.shape[4]) < self.min_size:
            raise ValueError(f"discriminator input {list(x.shape[2:])} is smaller than {self.min_size} on some axis")
        return self.head(self.features(x))
