"""Progress bars that never outlive an error line."""

from __future__ import annotations

__all__ = ["close_progress_bars"]


def close_progress_bars() -> bool:
    """Close every open tqdm bar (ignite's ProgressBar), so none redraws after an error line; True if any was."""
    try:
        from tqdm import tqdm
    except ImportError:
        return False
    bars = list(getattr(tqdm, "_instances", []))
    for bar in bars:
        bar.close()
    return bool(bars)
