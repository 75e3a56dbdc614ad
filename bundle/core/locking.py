"""One run per folder: a lock on the checkpoint folder of a training and on the output folder of an inference.

Without it, two trainings on one `--ckpt_dir` (a second `make demo`, a rerun in another terminal, two jobs of
a scheduler) resume from each other's checkpoints, delete each other's files as "older", mix one
`train_log.csv` and let the worse model.pt win; two inferences into one folder race on its manifest.

`FolderLock` takes an exclusive `fcntl.flock` on `<folder>/.lock` and writes the holder (process id, host,
purpose, start time) into it. The kernel drops the lock when the holder dies, however it dies (SIGKILL
included), so a lock file left by a killed run is taken over, with a warning naming the gone process. A second
live run stops with one line naming the folder and the process that holds it. Where `fcntl` is missing
(Windows), the lock file is created exclusively and a holder whose process is gone counts as stale.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path

from ignite.engine import Engine, Events

from bundle.core.errors import FolderLockError

try:
    import fcntl
except ImportError:  # Windows: exclusive creation and a process-alive check instead
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "FolderLock", "FolderLockHandler"]

LOCK_NAME = ".lock"

logger = logging.getLogger(__name__)
_held: dict[str, FolderLock] = {}  # the locks this process holds, by folder


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists but belongs to someone else
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    text = f"process {holder.get('pid', '?')}"
    if holder.get("host") and holder.get("host") != socket.gethostname():
        text += f" on {holder['host']}"
    if holder.get("purpose"):
        text += f" ({holder['purpose']}"
        text += f" since {holder['started']})" if holder.get("started") else ")"
    return text


class FolderLock:
    """An exclusive lock on `folder` for the lifetime of one run.

    Args:
        folder: the folder to lock (made if missing; removed again at release if the run left it empty).
        purpose: what the run does ("training", "inference"), written into the lock for the other run's message.
        option: the command-line option that chooses another folder, for the advice ("--ckpt_dir").
    """

    def __init__(self, folder: str | os.PathLike, purpose: str = "a run", option: str = "") -> None:
        self.folder, self.purpose, self.option = Path(folder), purpose, option
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._made_folder = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _busy(self, holder: dict) -> FolderLockError:
        other = f"another --{self.option.lstrip('-')}" if self.option else "another folder"
        return FolderLockError(
            f"{self.folder}: in use by {_describe(holder)}; wait for it to finish, or use {other} "
            f"(the lock is {self.path})"
        )

    def acquire(self) -> FolderLock:
        """Take the lock or stop with one line (`FolderLockError`) naming the folder and the holder."""
        if self.held:
            return self
        earlier = _held.get(str(self.folder.resolve()))
        if earlier is not None:  # a run of this process that ended without releasing (an exception): over now
            logger.warning("%s: taking over the lock an earlier run of this process held", self.folder)
            earlier.release()
        self._made_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retry when the holder released and removed the file between our open and lock
            fd = self._open_locked()
            if fd is None:
                continue
            self._fd = fd
            break
        else:
            raise self._busy(_read_holder(self.path))
        previous = _read_holder(self.path)
        if previous.get("pid") not in (None, os.getpid()):
            logger.warning(
                "%s: taking over the lock of %s, which is no longer running (killed?)", self.folder, _describe(previous)
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": self.purpose,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)
        os.fsync(self._fd)
        atexit.register(self.release)
        _held[str(self.folder.resolve())] = self
        return self

    def _open_locked(self) -> int | None:
        """An open, locked descriptor of the lock file; None if the file was replaced meanwhile (retry)."""
        if fcntl is None:
            return self._open_exclusive()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._busy(_read_holder(self.path)) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            same = False
        if not same:  # locked a file its holder had just removed: lock the new one
            os.close(fd)
            return None
        return fd

    def _open_exclusive(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder(self.path)
            pid = holder.get("pid")
            if isinstance(pid, int) and not _process_alive(pid):
                logger.warning(
                    "%s: taking over the lock of %s, which is no longer running", self.folder, _describe(holder)
                )
                self.path.unlink(missing_ok=True)
                return None
            raise self._busy(holder) from None

    def release(self) -> None:
        """Remove the lock file and drop the lock; remove the folder if this run made it and left it empty."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before the lock drops, so no waiter locks a dead file unnoticed
        finally:
            os.close(self._fd)
            self._fd = None
        atexit.unregister(self.release)
        if _held.get(str(self.folder.resolve())) is self:
            del _held[str(self.folder.resolve())]
        if self._made_folder:
            try:
                self.folder.rmdir()  # only if empty
            except OSError:
                pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class FolderLockHandler:
    """Ignite handler: lock `folder` when attached (put it before `ResumeFromCheckpoint` in the handler list, so
    no checkpoint is read before the folder is this run's), release when the run completes or the process ends.

    Only the main process locks (DDP ranks share the folder of one run).
    """

    def __init__(self, folder: str | os.PathLike, purpose: str = "training", option: str = "ckpt_dir") -> None:
        self.lock = FolderLock(folder, purpose, option)

    def attach(self, engine: Engine) -> None:
        from bundle.core.distributed import is_main_process

        if not is_main_process():
            return
        self.lock.acquire()
        engine.add_event_handler(Events.COMPLETED, lambda _: self.lock.release())
