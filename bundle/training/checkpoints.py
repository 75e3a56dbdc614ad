"""Crash-safe training state: atomic checkpoints, a best model that survives resumes, and checked resumption.

Why not MONAI's CheckpointSaver/CheckpointLoader: ignite's DiskSaver, as MONAI builds it, deletes the old file
before writing the new one without a temporary file, so a kill during a save leaves a 0-byte newest
checkpoint (every rerun then dies with EOFError) or no model.pt at all; the best metric lives only in memory,
so a resumed run calls a worse epoch "new best"; NaN weights are saved like any others; `n_saved` forgets
files of earlier runs; and a checkpoint of another configuration is loaded until something deep in ignite
breaks. The handlers here are plain ignite handlers (`attach(engine)`), configured from JSON with every
collaborator passed in:

- `TrainingCheckpointer` (trainer): `<prefix>_epoch=N.pt` every `save_interval` epochs, written atomically.
- `BestModelSaver` (evaluator): `model.pt` (generator weights only) when the key metric improves.
- `BestMetric`: the best value and its epoch, shared by both and saved in every checkpoint.
- `ResumeFromCheckpoint` (trainer): restores the newest readable checkpoint at attach time, before training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from bundle.core.atomic import replace_atomically
from bundle.core.distributed import is_main_process, unwrap
from bundle.core.errors import CheckpointError, NonFiniteWeightsError, describe_load_error

__all__ = [
    "atomic_save",
    "is_finite_state",
    "list_checkpoints",
    "upgrade_run_record",
    "BestMetric",
    "TrainingCheckpointer",
    "BestModelSaver",
    "ResumeFromCheckpoint",
]

logger = logging.getLogger(__name__)

RESUME_ADVICE = "start afresh with `--resume False` or use another `--ckpt_dir`"
RESERVED_KEYS = ("epoch", "run_record")


def _remove_stale_temporaries(folder: Path, name_glob: str) -> None:
    """Delete temporary files `atomic_save` left for `name_glob` when a run was killed mid-save."""
    for tmp in folder.glob(f".{name_glob}.*.tmp"):
        tmp.unlink(missing_ok=True)


class _WriteErrorRecorder:
    """A binary file wrapper that remembers the OSError of a failed write (torch.save reports only its own
    "unexpected pos" RuntimeError when a write fails, e.g. on a full disk)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path` so that `path` always holds either the old file or the complete new one
    (see `bundle.core.atomic`). The folder must exist."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            recorder = _WriteErrorRecorder(f)
            try:
                torch.save(obj, recorder)  # type: ignore[arg-type]  # a file-like object, as torch.save takes
            except RuntimeError:
                if recorder.error is not None:  # torch hides a failed write (disk full) behind its own error
                    raise recorder.error from None
                raise

    return replace_atomically(path, write)


def is_finite_state(state_dict: Mapping[str, Any], prefix: str = "") -> tuple[bool, str | None]:
    """(True, None) if every floating-point tensor in `state_dict` (nested mappings too) is finite, else
    (False, the first offending key, dotted for nested entries). One device sync when all are finite."""
    tensors: list[tuple[str, torch.Tensor]] = []

    def collect(mapping: Mapping[str, Any], pre: str) -> None:
        for key, value in mapping.items():
            name = f"{pre}{key}"
            if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
                tensors.append((name, value))
            elif isinstance(value, Mapping):
                collect(value, f"{name}.")

    collect(state_dict, prefix)
    if not tensors:
        return True, None
    device = tensors[0][1].device
    flags = torch.stack([torch.isfinite(t).all().to(device) for _, t in tensors])
    if bool(flags.all()):
        return True, None
    return False, tensors[int((~flags).nonzero()[0])][0]


def upgrade_run_record(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A run record in today's ids: `residual_upsample` (a bool, before the B-spline base existed) is the
    `residual_base` "trilinear" (True) or "none" (False), so resuming such a run with another base is refused."""
    record = dict(saved)
    if "residual_upsample" in record and "residual_base" not in record:
        record["residual_base"] = "trilinear" if record.pop("residual_upsample") else "none"
    return record


def _checkpoint_pattern(prefix: str) -> re.Pattern:
    # `<prefix>_epoch=N.pt`, and MONAI CheckpointSaver's `<prefix>_checkpoint_epoch=N.pt` of earlier versions
    return re.compile(rf"{re.escape(prefix)}(?:_checkpoint)?_epoch=(\d+)\.pt")


def list_checkpoints(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> list[tuple[int, Path]]:
    """[(epoch, path)] of the interval checkpoints in `ckpt_dir`, oldest epoch first (none if no folder)."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    pattern = _checkpoint_pattern(prefix)
    found = []
    for path in folder.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            # for one epoch, the current name sorts after a legacy one, so it counts as newer
            found.append((int(match.group(1)), "_checkpoint_epoch=" not in path.name, path))
    return [(epoch, path) for epoch, _, path in sorted(found)]


def _plain(value: Any) -> Any:
    """JSON-like copy (tuples -> lists, paths -> str) so run records compare equal and load weights_only."""
    return json.loads(json.dumps(value, default=str))


class BestMetric:
    """The best value of one validation metric so far and the epoch it came from.

    One object is given to both `BestModelSaver` (which updates it) and `TrainingCheckpointer` (which saves
    its `state_dict()` in every checkpoint), so `ResumeFromCheckpoint` restores it and a resumed run only
    replaces model.pt with a truly better model.

    Args:
        name: the metric's key in `engine.state.metrics`, e.g. "val_psnr".
        mode: "max" (higher is better, e.g. PSNR) or "min" (e.g. a loss).
    """

    def __init__(self, name: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.name, self.mode = name, mode
        self.value: float | None = None
        self.epoch: int | None = None

    def is_better(self, value: float) -> bool:
        """True if `value` is finite and beats the best so far (any finite value beats none)."""
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.mode == "max" else value < self.value

    def update(self, value: float, epoch: int) -> None:
        self.value, self.epoch = float(value), int(epoch)

    def state_dict(self) -> dict:
        return {"name": self.name, "mode": self.mode, "value": self.value, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name", self.name) != self.name or state.get("mode", self.mode) != self.mode:
            raise ValueError(
                f"the saved best metric is {state.get('name')} ({state.get('mode')}), this run tracks "
                f"{self.name} ({self.mode})"
            )
        value, epoch = state.get("value"), state.get("epoch")
        self.value = None if value is None else float(value)
        self.epoch = None if epoch is None else int(epoch)

    def describe(self) -> str:
        return "none" if self.value is None else f"{self.value:.6g} at epoch {self.epoch}"


class TrainingCheckpointer:
    """Every `save_interval` epochs, save the whole training state to `<save_dir>/<prefix>_epoch=N.pt`.

    The file holds `{key: obj.state_dict()}` for every entry of `save_dict` (networks unwrapped from DDP,
    optimisers, a `BestMetric`), the attached engine's counters under `engine_key` (`engine.state_dict()`),
    "epoch" and "run_record" (the configuration facts `ResumeFromCheckpoint` checks). It is written with
    `atomic_save`, so a kill during a save leaves the previous checkpoint intact. The folder is created at
    the first save, so a run that fails earlier leaves none behind.

    Networks (`torch.nn.Module` entries) with any NaN/inf tensor are never saved: an error line names the
    epoch and the tensor, and with `stop_on_non_finite` the run stops (`NonFiniteWeightsError`, exit 1) so a
    rerun resumes from the last good checkpoint.

    After a save the folder keeps the newest `n_saved` checkpoints, files of earlier runs included; files
    with a higher epoch than the one just saved come from an abandoned run (e.g. `--resume False`) and go.
    Old files are deleted only once the new one is in place. Only rank 0 writes; every rank checks weights.

    Attach after the ValidationHandler so the checkpoint carries this epoch's best metric.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        run_record: Mapping[str, Any] | None = None,
        save_interval: int = 1,
        n_saved: int | None = 2,
        prefix: str = "checkpoint",
        engine_key: str = "trainer",
        stop_on_non_finite: bool = True,
    ) -> None:
        clash = [k for k in save_dict if k in (*RESERVED_KEYS, engine_key)]
        if clash:
            raise ValueError(f"save_dict keys {clash} are reserved for the checkpoint's own entries")
        if save_interval < 1 or (n_saved is not None and n_saved < 1):
            raise ValueError(f"save_interval and n_saved must be >= 1, got {save_interval} and {n_saved}")
        self.save_dir, self.save_dict, self.prefix = Path(save_dir), dict(save_dict), prefix
        self.run_record = _plain(dict(run_record or {}))
        self.save_interval, self.n_saved, self.engine_key = int(save_interval), n_saved, engine_key
        self.stop_on_non_finite = stop_on_non_finite
        self.last_saved: Path | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)

    def path_for(self, epoch: int) -> Path:
        return self.save_dir / f"{self.prefix}_epoch={epoch}.pt"

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        for key, obj in self.save_dict.items():
            module = unwrap(obj)
            if isinstance(module, torch.nn.Module):
                finite, bad = is_finite_state(module.state_dict(), prefix=f"{key}.")
                if not finite:
                    self._refuse(epoch, bad)
                    return
        if not is_main_process():
            return
        payload: dict[str, Any] = {key: unwrap(obj).state_dict() for key, obj in self.save_dict.items()}
        payload[self.engine_key] = dict(engine.state_dict())
        payload["epoch"] = int(epoch)
        payload["run_record"] = self.run_record
        self.save_dir.mkdir(parents=True, exist_ok=True)
        path = atomic_save(payload, self.path_for(epoch))
        self.last_saved = path
        logger.info("Saved checkpoint at epoch: %d (%s)", epoch, path)
        self._prune(epoch)

    def _refuse(self, epoch: int, tensor: str | None) -> None:
        newest = list_checkpoints(self.save_dir, self.prefix)
        last = newest[-1][1] if newest else "none"
        message = (
            f"epoch {epoch}: {tensor} holds NaN or infinite values; no checkpoint saved "
            f"(last good checkpoint: {last}). Lower --learning_rate or check the data"
        )
        logger.error(message)
        if self.stop_on_non_finite:
            raise NonFiniteWeightsError(message)

    def _prune(self, epoch: int) -> None:
        current = self.path_for(epoch)
        older: list[Path] = []
        abandoned: list[Path] = []
        for e, path in list_checkpoints(self.save_dir, self.prefix):
            if path != current:
                (abandoned if e > epoch else older).append(path)
        surplus = max(len(older) - (self.n_saved - 1), 0) if self.n_saved is not None else 0
        doomed = abandoned + older[:surplus]
        for path in doomed:
            path.unlink(missing_ok=True)
        _remove_stale_temporaries(self.save_dir, f"{self.prefix}_epoch=*.pt")
        if doomed:
            logger.info("removed older checkpoint(s): %s", ", ".join(p.name for p in doomed))


class BestModelSaver:
    """After each validation, write `save_path` (model.pt) if the key metric beats the best so far.

    model.pt holds only the generator's `state_dict()` (unwrapped from DDP), the file inference and MONAI
    Label load. It is written atomically, never with non-finite weights and never for a NaN/inf metric.
    The best value lives in the shared `best_metric`, which the checkpointer saves and resume restores, so
    after a resume a worse epoch does not replace the model. Attach to the evaluator (its `state.epoch` is
    the trainer's epoch after a MONAI validation run) or to the trainer; it runs at EPOCH_COMPLETED, after
    the engine's metrics. On a MONAI workflow whose key metric is the same, it also keeps the workflow's
    `state.best_metric` in step with the shared value.
    """

    def __init__(self, network: torch.nn.Module, best_metric: BestMetric, save_path: str | os.PathLike) -> None:
        self.network, self.best_metric, self.save_path = network, best_metric, Path(save_path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.sync_engine_best)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def sync_engine_best(self, engine: Engine) -> None:
        """Give a MONAI workflow's own best-metric record the restored value, so after a resume it does not
        log "Got new best metric" for a worse epoch."""
        state = engine.state
        if self.best_metric.value is not None and getattr(state, "key_metric_name", None) == self.best_metric.name:
            # attributes MONAI's workflows add to ignite's State
            state.best_metric, state.best_metric_epoch = self.best_metric.value, self.best_metric.epoch  # type: ignore[attr-defined]

    def __call__(self, engine: Engine) -> None:
        name, epoch = self.best_metric.name, int(engine.state.epoch)
        if name not in engine.state.metrics:
            logger.warning("epoch %d: no metric %s to choose the best model by; model.pt not updated", epoch, name)
            return
        value = float(engine.state.metrics[name])
        if not math.isfinite(value):
            logger.error("epoch %d: %s is %s; model.pt not updated", epoch, name, value)
            return
        if not self.best_metric.is_better(value):
            return
        state = unwrap(self.network).state_dict()
        finite, bad = is_finite_state(state)
        if not finite:
            logger.error("epoch %d: %s holds NaN or infinite values; model.pt not updated", epoch, bad)
            return
        previous = self.best_metric.describe()
        if is_main_process():
            self.save_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(state, self.save_path)
            _remove_stale_temporaries(self.save_path.parent, self.save_path.name)
        self.best_metric.update(value, epoch)
        logger.info("new best %s %.6g at epoch %d (previous %s): %s", name, value, epoch, previous, self.save_path)


def _load(path: Path, map_location: Any) -> tuple[dict | None, str]:
    """(checkpoint, "") if `path` loads as a dict with weights_only=True, else (None, why not)."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # EOFError, RuntimeError (zip), UnpicklingError, OSError: all mean unreadable
        return None, describe_load_error(err)
    if not isinstance(checkpoint, dict):
        return None, f"holds a {type(checkpoint).__name__}, not a checkpoint dict"
    return checkpoint, ""


class ResumeFromCheckpoint:
    """At attach time (before training), restore the newest readable checkpoint of `ckpt_dir`, if any.

    - Unreadable files (0-byte, truncated, corrupt) are skipped with one warning line each; the previous
      checkpoint is used. If none is readable the run stops with one line.
    - The saved run record (network sizes, scale, dataset, degradation, patch size, ...) must equal
      `run_record`; otherwise the run stops before training, naming every difference. `also_accept`
      ({run_record key: value}) names values an earlier stage's checkpoint may hold: a training stage that
      continues another on other data (the release model's stage 2: `dataset_dir`) starts from that stage's
      last checkpoint, and the change is logged instead of refused.
    - A checkpoint at or past `max_epochs` means the run is finished: stop, advising a larger --max_epochs.
    - Restores every `load_dict` entry (networks, optimisers, `BestMetric`) and the engine's counters;
      `max_epochs` and the epoch length stay those of this run.
    - Re-applies `learning_rates` ({load_dict key: lr}) to the restored optimisers, logging each change:
      a changed --learning_rate takes effect on resume.

    The engine it is attached to is restored under `engine_key` (a config cannot name the trainer inside
    the trainer's own handler list). Creates no folder. `enabled=False` starts afresh; existing checkpoints
    are then replaced by `TrainingCheckpointer` as the new run saves.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: Mapping[str, Any],
        max_epochs: int | None = None,
        run_record: Mapping[str, Any] | None = None,
        learning_rates: Mapping[str, float] | None = None,
        enabled: bool = True,
        prefix: str = "checkpoint",
        engine_key: str = "trainer",
        map_location: Any = "cpu",
        also_accept: Mapping[str, Any] | None = None,
    ) -> None:
        unknown = [k for k in (learning_rates or {}) if k not in load_dict]
        if unknown:
            raise ValueError(f"learning_rates names {unknown}, which are not in load_dict {list(load_dict)}")
        not_recorded = [k for k in (also_accept or {}) if run_record is None or k not in run_record]
        if not_recorded:
            raise ValueError(f"also_accept names {not_recorded}, which are not in the run record")
        self.also_accept = _plain(dict(also_accept or {}))
        self.ckpt_dir, self.load_dict, self.max_epochs = Path(ckpt_dir), dict(load_dict), max_epochs
        self.run_record = None if run_record is None else _plain(dict(run_record))
        self.learning_rates = dict(learning_rates or {})
        self.enabled, self.prefix, self.engine_key, self.map_location = enabled, prefix, engine_key, map_location
        self.path: Path | None = None

    def attach(self, engine: Engine) -> None:
        found = list_checkpoints(self.ckpt_dir, self.prefix)
        if not self.enabled:
            if found:
                logger.info(
                    "resume is off: the %d checkpoint(s) in %s will be replaced as this run saves its own",
                    len(found),
                    self.ckpt_dir,
                )
            return
        if not found:
            logger.info("no checkpoint to resume from in %s: starting from scratch", self.ckpt_dir)
            return
        path, checkpoint = self._newest_readable(found)
        self._check(path, checkpoint)
        self._restore(engine, path, checkpoint)
        self.path = path

    def _newest_readable(self, found: list[tuple[int, Path]]) -> tuple[Path, dict]:
        reasons = []
        for _, path in reversed(found):
            checkpoint, why = _load(path, self.map_location)
            if checkpoint is not None:
                return path, checkpoint
            logger.warning("%s: unreadable (%s); trying the previous checkpoint", path, why)
            reasons.append(f"{path.name}: {why}")
        raise CheckpointError(f"{self.ckpt_dir}: no readable checkpoint ({'; '.join(reasons)}); {RESUME_ADVICE}")

    def _check(self, path: Path, checkpoint: dict) -> None:
        required = [k for k, obj in self.load_dict.items() if not isinstance(obj, BestMetric)] + [self.engine_key]
        missing = [k for k in required if k not in checkpoint]
        if missing:
            raise CheckpointError(f"{path}: has no {', '.join(missing)} entries; {RESUME_ADVICE}")
        saved = checkpoint.get("run_record")
        if saved is not None:
            saved = upgrade_run_record(saved)
        if self.run_record is not None:
            if saved is None:
                logger.warning("%s: has no run record (an earlier version wrote it); configuration not checked", path)
            else:
                changed = [k for k in self.run_record if k in saved and saved[k] != self.run_record[k]]
                accepted = [k for k in changed if k in self.also_accept and saved[k] == self.also_accept[k]]
                for k in accepted:
                    logger.info("%s: continues a run with %s %r (now %r)", path, k, saved[k], self.run_record[k])
                diffs = [f"{k} {saved[k]!r} -> {self.run_record[k]!r}" for k in changed if k not in accepted]
                if diffs:
                    raise CheckpointError(
                        f"{path}: written by a different configuration ({'; '.join(diffs)}); {RESUME_ADVICE}"
                    )
        epoch = self._saved_epoch(checkpoint)
        if self.max_epochs is not None and epoch >= self.max_epochs:
            raise CheckpointError(
                f"{path}: training already finished (epoch {epoch} of --max_epochs {self.max_epochs}); raise "
                f"--max_epochs to train on, or {RESUME_ADVICE}"
            )

    def _saved_epoch(self, checkpoint: dict) -> int:
        if "epoch" in checkpoint:
            return int(checkpoint["epoch"])
        counters = checkpoint[self.engine_key]
        return int(counters["iteration"]) // max(int(counters["epoch_length"]), 1)

    def _restore(self, engine: Engine, path: Path, checkpoint: dict) -> None:
        logger.info("resuming from %s", path)
        for key, obj in self.load_dict.items():
            if key not in checkpoint:  # a BestMetric missing from an earlier version's checkpoint
                logger.warning("%s: has no %s; the best metric starts afresh", path, key)
                continue
            try:
                unwrap(obj).load_state_dict(checkpoint[key])
            except (RuntimeError, ValueError, KeyError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise CheckpointError(
                    f"{path}: its {key} does not fit this configuration ({first}); {RESUME_ADVICE}"
                ) from None
        self._restore_counters(engine, checkpoint)
        self._apply_learning_rates()
        for obj in self.load_dict.values():
            if isinstance(obj, BestMetric):
                logger.info("best %s so far: %s", obj.name, obj.describe())

    def _restore_counters(self, engine: Engine, checkpoint: dict) -> None:
        saved = checkpoint[self.engine_key]
        epoch = self._saved_epoch(checkpoint)
        epoch_length = engine.state.epoch_length or int(saved["epoch_length"])
        if int(saved["epoch_length"]) != epoch_length:
            logger.info("epoch length %s -> %d iterations (from this run's data)", saved["epoch_length"], epoch_length)
        max_epochs = self.max_epochs if self.max_epochs is not None else engine.state.max_epochs
        state = {"epoch": epoch, "epoch_length": epoch_length, "max_epochs": max_epochs}
        state.update({k: saved[k] for k in engine.state_dict_user_keys if k in saved})
        engine.load_state_dict(state)

    def _apply_learning_rates(self) -> None:
        for key, lr in self.learning_rates.items():
            optimizer = self.load_dict[key]
            groups = optimizer.param_groups
            rates = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(groups)
            if len(rates) != len(groups):
                raise CheckpointError(f"{key}: {len(rates)} learning rates for {len(groups)} parameter groups")
            for group, new in zip(groups, rates, strict=True):
                old = group["lr"]
                if float(old) != float(new):
                    logger.info("%s: learning rate %g -> %g (from the config)", key, old, new)
                group["lr"] = float(new)
                if "initial_lr" in group:  # keep an LR scheduler's base in step
                    group["initial_lr"] = float(new)
