"""SRGANTrainer: MONAI's AdversarialTrainer made right for super-resolution."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from monai.engines import AdversarialTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import AdversarialIterationEvents, AdversarialKeys, CommonKeys

from bundle.losses import AdversarialCriterion, SRGeneratorLoss

__all__ = ["SRGANTrainer", "PrepareSRBatch"]


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else the network itself."""
    return net.module if isinstance(net, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else net


class PrepareSRBatch:
    """Take (LR input, HR target) from a batch dict and move them to the device."""

    def __init__(self, lr_key: str = "lr", hr_key: str = "image", channels_last: bool = False) -> None:
        self.lr_key, self.hr_key = lr_key, hr_key
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format

    def __call__(self, batchdata: dict, device: torch.device | str | None = None, non_blocking: bool = False, **kw):
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
        content_loss: SRGeneratorLoss,
        adversarial_loss: AdversarialCriterion | str = "bce",
        adversarial_weight: float = 0.001,
        adversarial_start_iteration: int = 0,
        lr_key: str = "lr",
        hr_key: str = "image",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        channels_last: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        iteration_update: Callable | None = None,
        optim_set_to_none: bool = True,
        **kwargs: Any,
    ) -> None:
        criterion = AdversarialCriterion(adversarial_loss) if isinstance(adversarial_loss, str) else adversarial_loss
        if amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {amp_dtype!r}")
        device = torch.device(device)
        use_amp = bool(amp) and device.type == "cuda"
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            g_network=g_network,
            g_optimizer=g_optimizer,
            g_loss_function=criterion.generator_loss,
            recon_loss_function=content_loss,
            d_network=d_network,
            d_optimizer=d_optimizer,
            d_loss_function=criterion.discriminator_loss,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=PrepareSRBatch(lr_key, hr_key, channels_last),
            iteration_update=iteration_update,
            train_handlers=train_handlers,
            key_train_metric=key_train_metric,
            amp=use_amp,
            amp_kwargs={"dtype": getattr(torch, amp_dtype)} if use_amp else None,
            decollate=False,
            optim_set_to_none=optim_set_to_none,
            **kwargs,
        )
        self.criterion = criterion
        self.content_loss = content_loss
        self.adversarial_weight = float(adversarial_weight)
        self.adversarial_start_iteration = int(adversarial_start_iteration)
        # bf16 has fp32's range: no loss scaling. fp16 needs a scaler for each optimiser.
        fp16 = use_amp and amp_dtype == "float16"
        self.state.g_scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.state.d_scaler = torch.amp.GradScaler("cuda") if fp16 else None
        if channels_last:
            g_network.to(memory_format=torch.channels_last_3d)
            d_network.to(memory_format=torch.channels_last_3d)

    def _complete_state_dict_user_keys(self) -> None:
        # Keep objects out of the trainer's state dict so checkpoints load with weights_only=True.
        pass

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", **self.amp_kwargs)
        return nullcontext()

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: Any) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def adversarial_active(self) -> bool:
        return self.adversarial_weight > 0 and self.state.iteration > self.adversarial_start_iteration

    def _iteration(self, engine: SRGANTrainer, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        lr, hr = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        state = engine.state
        g_net, d_net = state.g_network, state.d_network
        d_frozen = _unwrap(d_net)
        output: dict[str, Any] = {CommonKeys.IMAGE: lr, CommonKeys.LABEL: hr, AdversarialKeys.REALS: hr}
        state.output = output
        use_adv = engine.adversarial_active()

        # generator step: content + weighted adversarial loss; the discriminator is frozen meanwhile
        g_net.train()
        state.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        d_frozen.requires_grad_(False)
        with engine._autocast():
            fake = engine.g_inferer(lr, g_net)
            output[AdversarialKeys.FAKES] = output[CommonKeys.PRED] = fake
            engine.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)
            terms = state.recon_loss_function(fake, hr)
            output[AdversarialKeys.RECONSTRUCTION_LOSS] = terms["total"]
            engine.fire_event(AdversarialIterationEvents.RECONSTRUCTION_LOSS_COMPLETED)
            if use_adv:
                fake_logits = engine.d_inferer(fake, d_frozen)
                output[AdversarialKeys.FAKE_LOGITS] = fake_logits
                engine.fire_event(AdversarialIterationEvents.GENERATOR_DISCRIMINATOR_FORWARD_COMPLETED)
                real_logits = None
                if engine.criterion.kind == "ragan":
                    with torch.no_grad():
                        real_logits = engine.d_inferer(hr, d_frozen)
                adv = engine.criterion.generator_loss(fake_logits, real_logits)
            else:
                adv = fake.new_zeros((), dtype=torch.float32)
            output[AdversarialKeys.GENERATOR_LOSS] = adv
            engine.fire_event(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED)
        g_loss = terms["total"] + engine.adversarial_weight * adv
        output[CommonKeys.LOSS] = g_loss
        engine._step(g_loss, state.g_optimizer, state.g_scaler)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)
        d_frozen.requires_grad_(True)

        # discriminator step: HR targets are the reals, the detached fakes the fakes
        d_loss = fake.new_zeros((), dtype=torch.float32)
        if use_adv:
            d_net.train()
            state.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            with engine._autocast():
                logits = engine.d_inferer(torch.cat([hr, fake.detach().to(hr.dtype)]), d_net)
                real_logits, fake_logits = logits.split(hr.shape[0])
                output[AdversarialKeys.REAL_LOGITS] = real_logits
                engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_REALS_FORWARD_COMPLETED)
                output[AdversarialKeys.FAKE_LOGITS] = fake_logits
                engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_FAKES_FORWARD_COMPLETED)
                d_loss = engine.criterion.discriminator_loss(real_logits, fake_logits)
                engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_LOSS_COMPLETED)
            engine._step(d_loss, state.d_optimizer, state.d_scaler)
            engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
        output[AdversarialKeys.DISCRIMINATOR_LOSS] = d_loss
        output["terms"] = {
            "total": g_loss.detach(),
            "mse": terms["mse"].detach(),
            "ssim": terms["ssim"].detach(),
            "perceptual": terms["perceptual"].detach(),
            "adversarial": adv.detach(),
            "discriminator": d_loss.detach(),
        }
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output
