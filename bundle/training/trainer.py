"""SRGANTrainer: MONAI's AdversarialTrainer made right for super-resolution."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from monai.engines import AdversarialTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import AdversarialIterationEvents, AdversarialKeys, CommonKeys

from bundle.core.choices import AMP_DTYPES
from bundle.core.distributed import unwrap
from bundle.core.errors import TrainingDiverged
from bundle.core.progress import close_progress_bars
from bundle.training.losses import GANObjective

__all__ = ["SRGANTrainer", "Precision", "PrepareSRBatch", "LOSS_TERMS", "MAX_LOSS"]

# The per-iteration loss terms the trainer writes into `output["terms"]`; handlers log exactly these.
LOSS_TERMS = ("total", "mse", "ssim", "perceptual", "adversarial", "discriminator")

# Largest |loss| a healthy run produces, by a wide margin: the content terms live in [0, ~2] on [0, 1] images
# and a saturated BCE / hinge / least-squares GAN term stays below ~1e2. An exploding discriminator or
# generator (e.g. --d_learning_rate 1e6) reaches 1e19 while still finite; beyond this bound training stops as
# it does on NaN. `SRGANTrainer(max_loss=...)` (`--train#trainer#max_loss`) changes it.
MAX_LOSS = 1e6


def _gradients_finite(module: torch.nn.Module) -> bool:
    """True when every gradient of `module` is finite (one device sync)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


@dataclass(frozen=True)
class Precision:
    """How the trainer computes: autocast (`amp`, on CUDA only) in `amp_dtype`, and channels-last 3-D memory.

    One object because the three settings decide together what the numbers and the memory layout are, and not
    what is learnt: the trainer, its batch preparation and both networks follow it. Config ids: amp, amp_dtype,
    channels_last (configs/train.json).
    """

    amp: bool = True  # on a CPU device the trainer runs in float32 whatever this says
    amp_dtype: str = "bfloat16"  # `AMP_DTYPES`; float16 brings a GradScaler per optimiser, bfloat16 needs none
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {AMP_DTYPES}, got {self.amp_dtype!r}")

    def autocast_on(self, device: torch.device) -> bool:
        """Whether the trainer autocasts on `device` (CUDA only)."""
        return bool(self.amp) and device.type == "cuda"


class PrepareSRBatch:
    """Take (LR input, HR target) from a batch dict and move them to the device."""

    def __init__(self, lr_key: str = "lr", hr_key: str = "image", channels_last: bool = False) -> None:
        self.lr_key, self.hr_key = lr_key, hr_key
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format

    def __call__(self, batchdata: dict, device: torch.device | str | None = None, non_blocking: bool = False, **kw):
        """Returns (lr (B, C, x, y, z), hr (B, C, sx*x, sy*y, sz*z)) on `device`."""

        def move(x: torch.Tensor) -> torch.Tensor:
            x = torch.as_tensor(x).to(device=device, non_blocking=non_blocking)
            return x.contiguous(memory_format=self.memory_format)

        return move(batchdata[self.lr_key]), move(batchdata[self.hr_key])


class SRGANTrainer(AdversarialTrainer):
    """Adversarial trainer for super-resolution; keeps AdversarialTrainer's events and output keys.

    Why a subclass and not AdversarialTrainer itself:
    - AdversarialTrainer shows the discriminator the generator *inputs* as reals; for SR these are LR
      volumes of another size. Here the reals are the HR targets.
    - Its generator loss sees only the fake logits, so ESRGAN's relativistic loss is impossible; here the
      criterion gets both logits.
    - Its discriminator keeps collecting weight gradients during the generator step; here it is frozen then.
    - Its checkpoint `state_dict` holds network and optimiser *objects*, which `weights_only` loading rejects;
      here the trainer's state is only its counters (save networks and optimisers as separate entries).
    - AMP: bf16 autocast needs no GradScaler; fp16 gets one. On CPU everything runs in fp32.
    - DDP: the generator step runs the *unwrapped* discriminator (it needs no weight gradients there), and
      the discriminator step sees reals and fakes in one forward, so each DDP module has exactly one
      forward per backward. With instance norm (the default) one joint forward equals two separate ones.

    Each iteration's output carries, besides the AdversarialKeys, a "terms" dict of detached tensors:
    mse, ssim, perceptual, adversarial, discriminator, total (the generator loss).

    Arguments as the data flows: the loader, the generator and its optimiser, the discriminator and its optimiser,
    the loss they are trained on (`objective`: `GANObjective`), how the numbers are computed (`precision`:
    `Precision`, None: its defaults) and the handlers; the rest are MONAI's and keep its defaults.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        g_network: torch.nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_network: torch.nn.Module,
        d_optimizer: torch.optim.Optimizer,
        objective: GANObjective,
        precision: Precision | None = None,
        train_handlers: Sequence | None = None,
        lr_key: str = "lr",
        hr_key: str = "image",
        epoch_length: int | None = None,
        non_blocking: bool = False,
        key_train_metric: dict | None = None,
        iteration_update: Callable | None = None,
        optim_set_to_none: bool = True,
        max_loss: float = MAX_LOSS,
        **kwargs: Any,
    ) -> None:
        criterion, precision = objective.criterion, precision or Precision()
        device = torch.device(device)
        use_amp = precision.autocast_on(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            g_network=g_network,
            g_optimizer=g_optimizer,
            g_loss_function=criterion.generator_loss,
            recon_loss_function=objective.content_loss,
            d_network=d_network,
            d_optimizer=d_optimizer,
            d_loss_function=criterion.discriminator_loss,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=PrepareSRBatch(lr_key, hr_key, precision.channels_last),
            iteration_update=iteration_update,
            train_handlers=train_handlers,
            key_train_metric=key_train_metric,
            amp=use_amp,
            amp_kwargs={"dtype": getattr(torch, precision.amp_dtype)} if use_amp else None,
            decollate=False,
            optim_set_to_none=optim_set_to_none,
            **kwargs,
        )
        # MONAI keeps the content loss as state.recon_loss_function and the criterion's two halves as
        # state.g_loss_function / state.d_loss_function; the steps below call them from there.
        self.relativistic = criterion.relativistic
        if not max_loss > 0:
            raise ValueError(f"max_loss must be > 0, got {max_loss}")
        self.max_loss = float(max_loss)
        self.objective = objective
        # bf16 has fp32's range: no loss scaling. fp16 needs a scaler for each optimiser.
        fp16 = use_amp and precision.amp_dtype == "float16"
        self.state.g_scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.state.d_scaler = torch.amp.GradScaler("cuda") if fp16 else None
        if precision.channels_last:
            g_network.to(memory_format=torch.channels_last_3d)
            d_network.to(memory_format=torch.channels_last_3d)

    def _handle_exception(self, e: BaseException) -> None:
        """One-line errors (SystemExit subclasses: a diverged run, a bad checkpoint) go straight to the user.

        Otherwise MONAI's StatsHandler logs them with a full traceback on EXCEPTION_RAISED. The newline ends
        a progress bar's line, so the error line starts a line of its own.
        """
        if isinstance(e, SystemExit):
            if not close_progress_bars():
                sys.stderr.write("\n")
            raise e
        super()._handle_exception(e)

    def _complete_state_dict_user_keys(self) -> None:
        # Keep objects out of the trainer's state dict so checkpoints load with weights_only=True.
        pass

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", **self.amp_kwargs)
        return nullcontext()

    def _backward_and_step(
        self, loss: torch.Tensor, network: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, term: str
    ) -> None:
        """Backward and optimiser step; stops training on a non-finite loss or gradient before any update.

        With a GradScaler (fp16) non-finite gradients are expected now and then: the scaler skips that step.
        """
        self._check_finite({term: loss})
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return
        loss.backward()
        if not _gradients_finite(network):
            self._diverged(f"a gradient of the {term} loss is not finite")
        optimizer.step()

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        """Stop on the first non-finite scalar among `terms`, or one beyond +-`max_loss` (an exploding GAN),
        with one device sync for all of them.

        Under DDP every rank learns whether any rank saw one (an all-reduce), so all ranks stop together
        instead of the others waiting for ever in the next gradient all-reduce.
        """
        values = torch.stack([v.detach().float() for v in terms.values()])
        finite = (torch.isfinite(values) & (values.abs() <= self.max_loss)).all().float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite):
            bad = [(n, v.item()) for n, v in terms.items() if not torch.isfinite(v).all()]
            huge = [(n, v.item()) for n, v in terms.items() if torch.isfinite(v).all() and v.abs() > self.max_loss]
            if bad:
                self._diverged(f"the {bad[0][0]} loss is {bad[0][1]}")
            elif huge:
                self._diverged(
                    f"the {huge[0][0]} loss is {huge[0][1]:.3g}, beyond the bound {self.max_loss:g} "
                    "(train#trainer#max_loss): it is exploding"
                )
            else:
                self._diverged("a loss is not finite or exploding on another rank")

    def _diverged(self, what: str) -> None:
        raise TrainingDiverged(
            f"training diverged at epoch {self.state.epoch}, iteration {self.state.iteration}: {what}. Nothing "
            "of this step was applied; the last checkpoint and model.pt are unchanged. Lower --learning_rate / "
            "--d_learning_rate, or check the training images."
        )

    def adversarial_active(self) -> bool:
        return self.objective.adversarial_active(self.state.iteration)

    def _generator_step(self, lr: torch.Tensor, hr: torch.Tensor, output: dict[str, Any], use_adv: bool):
        """Content + weighted adversarial loss on G; D is frozen (and used unwrapped, see the class docstring).

        lr: (B, C, x, y, z), hr: (B, C, sx*x, sy*y, sz*z). Returns (fake, content terms, generator loss,
        adversarial term).
        """
        state = self.state
        d_frozen = unwrap(state.d_network)
        state.g_network.train()
        state.g_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        d_frozen.requires_grad_(False)
        try:
            with self._autocast():
                fake = self.g_inferer(lr, state.g_network)
                output[AdversarialKeys.FAKES] = output[CommonKeys.PRED] = fake
                self.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)
                terms = state.recon_loss_function(fake, hr)
                output[AdversarialKeys.RECONSTRUCTION_LOSS] = terms["total"]
                self.fire_event(AdversarialIterationEvents.RECONSTRUCTION_LOSS_COMPLETED)
                adv = fake.new_zeros((), dtype=torch.float32)
                if use_adv:
                    fake_logits = self.d_inferer(fake, d_frozen)
                    output[AdversarialKeys.FAKE_LOGITS] = fake_logits
                    self.fire_event(AdversarialIterationEvents.GENERATOR_DISCRIMINATOR_FORWARD_COMPLETED)
                    real_logits = None
                    if self.relativistic:
                        with torch.no_grad():
                            real_logits = self.d_inferer(hr, d_frozen)
                    adv = state.g_loss_function(fake_logits, real_logits)
                output[AdversarialKeys.GENERATOR_LOSS] = adv
                self.fire_event(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED)
            self._check_finite({name: terms[name] for name in ("mse", "ssim", "perceptual")} | {"adversarial": adv})
            g_loss = self.objective.generator_loss(terms["total"], adv)
            output[CommonKeys.LOSS] = g_loss
            self._backward_and_step(g_loss, state.g_network, state.g_optimizer, state.g_scaler, "generator")
        finally:
            d_frozen.requires_grad_(True)
        self.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
        self.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)
        return fake, terms, g_loss, adv

    def _discriminator_step(self, hr: torch.Tensor, fake: torch.Tensor, output: dict[str, Any]) -> torch.Tensor:
        """D learns HR targets as reals and the detached fakes as fakes, in one joint forward (DDP-safe).

        hr, fake: (B, C, X, Y, Z). Returns the discriminator loss (scalar).
        """
        state = self.state
        state.d_network.train()
        state.d_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast():
            logits = self.d_inferer(torch.cat([hr, fake.detach().to(hr.dtype)]), state.d_network)
            real_logits, fake_logits = logits.split(hr.shape[0])
            output[AdversarialKeys.REAL_LOGITS] = real_logits
            self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_REALS_FORWARD_COMPLETED)
            output[AdversarialKeys.FAKE_LOGITS] = fake_logits
            self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_FAKES_FORWARD_COMPLETED)
            d_loss = state.d_loss_function(real_logits, fake_logits)
            self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_LOSS_COMPLETED)
        self._backward_and_step(d_loss, state.d_network, state.d_optimizer, state.d_scaler, "discriminator")
        self.fire_event(AdversarialIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
        return d_loss

    def _iteration(  # type: ignore[override]  # MONAI annotates the engine as AdversarialTrainer; ours is one
        self, engine: SRGANTrainer, batchdata: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        """One generator step, then (once the adversarial term is active) one discriminator step."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        lr, hr = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        output: dict[str, Any] = {CommonKeys.IMAGE: lr, CommonKeys.LABEL: hr, AdversarialKeys.REALS: hr}
        engine.state.output = output
        use_adv = engine.adversarial_active()
        fake, terms, g_loss, adv = engine._generator_step(lr, hr, output, use_adv)
        d_loss = engine._discriminator_step(hr, fake, output) if use_adv else fake.new_zeros((), dtype=torch.float32)
        output[AdversarialKeys.DISCRIMINATOR_LOSS] = d_loss
        values = {**terms, "total": g_loss, "adversarial": adv, "discriminator": d_loss}
        output["terms"] = {name: values[name].detach() for name in LOSS_TERMS}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output
