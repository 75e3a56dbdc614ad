"""A child process run with its wall time and the peak resident memory of its whole process tree, stopped at a
timeout with everything it started (its own process group); one line saying why when it fails."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_OVER_BUDGET = 2.0  # a method still running at this multiple of the budget is stopped and reported


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident bytes) for every process /proc shows."""
    table = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/statm") as f:
                rss_pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), rss_pages * page)
    return table


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants now."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += table.get(pid, (0, 0))[1]
        stack.extend(children.get(pid, []))
    return total


def first_error_line(stderr: str) -> str:
    """The line that says why: a Python traceback's last line, else the first non-empty line of stderr."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "no message on stderr"
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        return lines[-1][:300]
    return lines[0][:300]


def run_measured(
    cmd: Sequence[str] | str,
    log_dir: Path,
    label: str,
    timeout_s: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    poll_s: float = 0.5,
    report_every_s: float = 30.0,
) -> dict[str, Any]:
    """Run `cmd`, stdout/stderr to `log_dir`, sampling the process tree's memory; a progress line every 30 s.

    Returns rc (None when stopped at `timeout_s`), wall_s, peak_rss_mb, and error (one line) when it failed.
    The child is its own process group, so stopping it at the timeout stops everything it started.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / "stdout.log", log_dir / "stderr.log"
    start = time.monotonic()
    peak, last_report = 0, start
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, cwd=cwd, env=env, shell=isinstance(cmd, str), start_new_session=True
        )
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            now = time.monotonic()
            if now - start > timeout_s:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
            if now - last_report >= report_every_s:
                print(f"  {label}: {now - start:.0f} s (stops at {timeout_s:.0f} s), {peak / 2**20:.0f} MB", flush=True)
                last_report = now
            time.sleep(poll_s)
    wall = time.monotonic() - start
    timed_out = wall > timeout_s and proc.returncode != 0
    result: dict[str, Any] = {
        "rc": None if timed_out else proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
    }
    if timed_out:
        result["error"] = f"stopped after {timeout_s:.0f} s ({TIMEOUT_OVER_BUDGET:g}x the budget)"
    elif proc.returncode != 0:
        result["error"] = first_error_line(err_path.read_text(errors="replace")).replace(f"{ROOT}/", "")
    return result
