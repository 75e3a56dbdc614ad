"""The generator as inference, the evaluation and the calibration run it: one component (`model_runner` in the
configs) holding the network, its weights, the device, the inferer, autocast and the test-time passes.

Each stage used to rebuild these from the same config ids (and each could drift: another autocast rule, weights
loaded another way); the calibration's bound only holds for outputs made the way it measured them, so the three run
the model through this one object. Inference hands `sr_inferer` to its MONAI evaluator and attaches the runner as a
handler (it loads the weights); the evaluation and the calibration call `predictor` and `tta`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.inferers import Inferer

from bundle.core.geometry import ensure_scale3
from bundle.core.progress import ProgressInferer
from bundle.inference.generator import load_generator
from bundle.trust.record import CalibrationRecord
from bundle.trust.tta import TTAResult, make_sr_inferer, tta_predict

__all__ = ["ModelRunner"]


class _Autocast(Inferer):
    """`inferer` under `runner`'s autocast: what MONAI's evaluator does with its own `amp` / `amp_kwargs`."""

    def __init__(self, inferer: Inferer, runner: ModelRunner) -> None:
        super().__init__()
        self.inferer, self.runner = inferer, runner

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.runner.autocast():
            return self.inferer(inputs, network, *args, **kwargs)


class ModelRunner:
    """Run `network` through `inferer` on `device`, with the weights at `ckpt_path`, under autocast.

    Args:
        network: the generator (built by the config, e.g. `RRDBNet3D`).
        inferer: how it runs on a whole LR volume (`bundle.inference.generator.make_inferer`).
        scale: its per-axis scale (what the test-time augmentations may permute).
        uncertainty: test-time augmentation passes (0: one plain pass and no uncertainty), the config's id.
        device: where the network runs.
        ckpt_path: the generator's weights (`load_generator`); None keeps the network's own.
        amp / amp_dtype: autocast on CUDA with this dtype ("bfloat16", "float16"); off on any other device.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Inferer,
        scale: int | Sequence[int],
        uncertainty: int,
        device: str | torch.device,
        ckpt_path: str | os.PathLike | None,
        amp: bool,
        amp_dtype: str,
    ) -> None:
        self.network, self.inferer = network, inferer
        self.scale = ensure_scale3(scale)
        self.uncertainty = uncertainty
        self.device = torch.device(device)
        self.ckpt_path = ckpt_path
        self.amp = bool(amp) and self.device.type == "cuda"
        self.amp_dtype: torch.dtype = getattr(torch, amp_dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast as every stage runs the network: CUDA with `amp_dtype` when `amp`, else nothing."""
        return torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp)

    def load(self) -> torch.nn.Module:
        """Load the weights (when `ckpt_path` is set), move the network to the device, in eval mode."""
        if self.ckpt_path is not None:
            load_generator(self.network, self.ckpt_path, self.device)
        return self.network.to(self.device).eval()

    def attach(self, engine: Engine) -> None:
        """As an inference handler: load the weights when attached, before any input is read (one `CheckpointError`
        line naming the file when they do not fit, `load_generator`)."""
        self.load()

    def predictor(self, desc: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """LR (B, C, X, Y, Z) -> SR (B, C, sX, sY, sZ) float32 on the device: one network pass under autocast, no
        gradients, with progress and an ETA logged under `desc` (over the passes of each volume)."""
        inferer = ProgressInferer(self.inferer, max(self.uncertainty, 1), desc=desc)

        @torch.no_grad()
        def predict(lr: torch.Tensor) -> torch.Tensor:
            self.network.eval()
            with self.autocast():
                return inferer(lr.to(self.device), self.network).float()

        return predict

    def tta(self, lr: torch.Tensor, predict: Callable[[torch.Tensor], torch.Tensor]) -> TTAResult:
        """`predict` (from `predictor`) over the `uncertainty` test-time augmentations of `lr`: the identity pass,
        the mean and the std (`bundle.trust.tta.tta_predict`)."""
        return tta_predict(lr, predict, self.scale, self.uncertainty)

    def sr_inferer(self, calibration: CalibrationRecord | None) -> Inferer:
        """Inference's inferer, for a MONAI evaluator given this runner's `network`: [SR | std] under the test-time
        passes (the SR the calibration chose, `make_sr_inferer`), or the SR alone without them, under autocast."""
        return _Autocast(make_sr_inferer(self.inferer, self.scale, self.uncertainty, calibration), self)
