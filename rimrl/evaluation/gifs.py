"""Episode GIFs: the frames of a traced episode, each with a caption strip (step, action, reward,
return), written with imageio (Pillow backend).

Pillow merges consecutive identical GIF frames into one; a caption that changes every step keeps
every step a frame of its own, and the held last frame carries an "end" caption, so even a
one-step episode is an animation of at least two frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["DEFAULT_FPS", "annotate_frame", "frame_captions", "slug", "write_gif"]

DEFAULT_FPS = 6  # slow enough to follow a MiniGrid agent's turns
_STRIP_HEIGHT = 14  # pixels of the caption strip under a frame (Pillow's default bitmap font is ~11 px)


def slug(text: str) -> str:
    """A file-name-safe form of a label or variant (``"more+novel"`` -> ``"more_novel"``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("_") or "x"


def _action_text(action: Any, names: Sequence[str] | None) -> str:
    flat = np.asarray(action).ravel()
    if flat.size == 1 and float(flat[0]).is_integer():
        index = int(flat[0])
        return names[index] if names is not None and 0 <= index < len(names) else str(index)
    return " ".join(f"{v:.2g}" for v in flat)


def frame_captions(
    actions: Sequence[Any], rewards: Sequence[float], action_names: Sequence[str] | None = None, truncated: bool = False
) -> list[str]:
    """Captions for a traced episode's frames: the start, one per step, then the held end frame.

    ``actions[k]`` and ``rewards[k]`` are step ``k + 1``'s; ``action_names`` turns discrete actions
    into words (MiniGrid's ``forward``, Atari's ``FIRE``). Returns ``len(actions) + 2`` captions.
    """
    if len(actions) != len(rewards):
        raise ValueError(f"{len(actions)} actions but {len(rewards)} rewards")
    captions = ["step 0 (start)"]
    total = 0.0
    for k, (action, reward) in enumerate(zip(actions, rewards, strict=True), start=1):
        total += float(reward)
        captions.append(f"step {k}  action {_action_text(action, action_names)}  reward {reward:.3g}  return {total:.3g}")
    ending = "trace stopped" if truncated else "end"
    captions.append(f"{ending}: return {total:.3g} in {len(actions)} steps")
    return captions


def annotate_frame(frame: np.ndarray, caption: str, min_lines: int = 1) -> np.ndarray:
    """``frame`` (``(H, W, 3)`` uint8) with a dark strip underneath holding ``caption`` in white.

    The strip goes below the image rather than over it, so no part of the scene is hidden; a
    caption wider than the frame wraps at its double spaces (step / action / reward / return).
    ``min_lines``: the strip's height in text lines at least, so that every frame of a GIF has the
    same size.
    """
    image = np.asarray(frame, dtype=np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    width = image.shape[1]
    font = ImageFont.load_default()
    lines = _fit_lines(caption, _measure(font), width - 4)
    strip = Image.new("RGB", (width, _STRIP_HEIGHT * max(len(lines), min_lines)), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((2, 1 + _STRIP_HEIGHT * i), line, fill=(255, 255, 255), font=font)
    return np.concatenate([image[..., :3], np.asarray(strip, dtype=np.uint8)], axis=0)


def _measure(font: Any) -> Any:
    """``text -> width in pixels`` in ``font``."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return lambda text: draw.textlength(text, font=font)


def _fit_lines(caption: str, measure: Any, width: float) -> list[str]:
    """Split ``caption`` at its double spaces into as few lines as fit ``width`` pixels (a part
    wider than the frame gets a line of its own and is cut at the edge)."""
    lines: list[str] = []
    for part in caption.split("  "):
        if lines and measure(f"{lines[-1]}  {part}") <= width:
            lines[-1] = f"{lines[-1]}  {part}"
        else:
            lines.append(part)
    return lines or [""]


def write_gif(
    frames: Sequence[np.ndarray],
    path: str | Path,
    fps: int = DEFAULT_FPS,
    hold_last: int = 3,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write RGB ``frames`` (each ``(H, W, 3)`` uint8) as a looping GIF with a caption under each; return its path.

    ``captions``: one per frame, plus optionally one more for the held end frame (as
    :func:`frame_captions` gives); by default ``step k`` and ``end``. ``hold_last`` shows the end
    frame that many frame-times, so the episode's outcome stays visible before the loop restarts.
    """
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    if captions is None:
        captions = [f"step {k}" for k in range(len(frames))] + ["end"]
    if len(captions) not in (len(frames), len(frames) + 1):
        raise ValueError(f"{len(frames)} frames need {len(frames)} or {len(frames) + 1} captions, got {len(captions)}")
    end_caption = captions[-1] if len(captions) > len(frames) else f"{captions[-1]} (end)"
    measure, width = _measure(ImageFont.load_default()), np.asarray(frames[0]).shape[1] - 4
    lines = max(len(_fit_lines(caption, measure, width)) for caption in [*captions, end_caption])
    stack = np.stack([annotate_frame(frame, caption, lines) for frame, caption in zip(frames, captions, strict=False)]
                     + [annotate_frame(frames[-1], end_caption, lines)])
    durations = [int(1000 / fps)] * len(frames) + [int(1000 / fps) * max(1, hold_last)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, stack, extension=".gif", duration=durations, loop=0)
    return path
