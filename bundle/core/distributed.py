"""Helpers for code that runs the same under one process and under torchrun (DDP)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["unwrap", "is_main_process"]


def unwrap(net: Any) -> Any:
    """The module inside DistributedDataParallel / DataParallel, else the object itself."""
    return net.module if isinstance(net, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else net


def is_main_process() -> bool:
    """True in a single-process run and on rank 0 of a distributed one: the process that writes files and logs."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
