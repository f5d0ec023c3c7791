"""Episode GIFs: the frames of a traced episode written with imageio (Pillow backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np

__all__ = ["DEFAULT_FPS", "slug", "write_gif"]

DEFAULT_FPS = 6  # slow enough to follow a MiniGrid agent's turns


def slug(text: str) -> str:
    """A file-name-safe form of a label or variant (``"more+novel"`` -> ``"more_novel"``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("_") or "x"


def write_gif(frames: Sequence[np.ndarray], path: str | Path, fps: int = DEFAULT_FPS, hold_last: int = 3) -> Path:
    """Write RGB ``frames`` (each ``(H, W, 3)`` uint8) as a looping GIF; return its path.

    ``hold_last`` repeats the final frame so the episode's outcome stays visible before the loop restarts.
    """
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack([np.asarray(frame, dtype=np.uint8) for frame in frames] + [np.asarray(frames[-1], dtype=np.uint8)] * hold_last)
    iio.imwrite(path, stack, extension=".gif", duration=int(1000 / fps), loop=0)
    return path
