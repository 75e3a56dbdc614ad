"""The project's generator on one-voxel-thick slabs, at the cost of a 2-D network and with identical output.

Per-scan adaptation trains on in-plane images and applies across slices, one 2-D slab (B, C, 1, Q, U) at a time:
a 3-D context would see a coarse axis in training (the slice axis) but only sharp ones when applied. On such a
slab a 3x3x3 convolution with zero padding only ever reads the centre plane of its kernel, so it equals a 2-D
convolution with `weight[:, :, 1]`; PyTorch's CPU conv3d is about 10x slower than that conv2d for these shapes
(measured on the 2-core machine: 4 -> 39 patches/s of 48x48 for a 2-block, 32-feature generator). `SlabConv3d`
is an `nn.Conv3d` (subclassed, so the state_dict keys, the checkpoint and the exported RRDBNet3D stay the same)
that takes the 2-D path on such slabs and the 3-D one otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SlabConv3d", "as_slab_network"]


class SlabConv3d(nn.Conv3d):
    """nn.Conv3d whose forward on a depth-1 input (kernel 3, padding 1, stride 1) is the equal 2-D convolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() == 5
            and x.shape[2] == 1
            and self.kernel_size == (3, 3, 3)
            and self.padding == (1, 1, 1)
            and self.stride == (1, 1, 1)
            and self.dilation == (1, 1, 1)
            and self.padding_mode == "zeros"
        ):
            return F.conv2d(x[:, :, 0], self.weight[:, :, 1], self.bias, padding=1, groups=self.groups)[:, :, None]
        return super().forward(x)


def as_slab_network(network: nn.Module) -> nn.Module:
    """Turn every nn.Conv3d of `network` into a SlabConv3d in place (same parameters) and return it."""
    for module in network.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = SlabConv3d
    return network
