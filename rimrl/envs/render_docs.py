"""Render one frame per distractor-suite variant for ``docs/envs.md``.

Regenerate the images with::

    python -m rimrl.envs.render_docs            # writes docs/env_<suite>_<variant>.png
    python -m rimrl.envs.render_docs --out-dir /tmp/frames --seed 3

Each PNG is MiniGrid's full-grid ``rgb_array`` render (the agent's 7x7 view highlighted) with a
caption strip naming the variant, the target and the distractor count.
"""

from __future__ import annotations

import argparse
import os

import gymnasium as gym
import numpy as np
from PIL import Image, ImageDraw

from rimrl.envs.variants import SUITE_SPECS

CAPTION_HEIGHT = 18


def frame_filename(suite: str, variant: str) -> str:
    """``env_<suite>_<variant>.png`` with ``-``/``+`` replaced, e.g. ``env_pickup_more_novel.png``."""
    return f"env_{suite.replace('-', '_')}_{variant.replace('+', '_')}.png"


def render_variant_frame(env_id: str, seed: int = 0) -> Image.Image:
    """First frame of ``env_id`` after ``reset(seed=seed)``, with a caption strip below."""
    env = gym.make(env_id, render_mode="rgb_array")
    try:
        _, info = env.reset(seed=seed)
        frame = np.asarray(env.render(), dtype=np.uint8)
    finally:
        env.close()
    height, width, _ = frame.shape
    canvas = Image.new("RGB", (width, height + CAPTION_HEIGHT), "white")
    canvas.paste(Image.fromarray(frame), (0, 0))
    caption = f"{env_id.removeprefix('rimrl/')}: {info['target']} + {info['num_distractors']} distractors"
    ImageDraw.Draw(canvas).text((4, height + 3), caption, fill="black")
    return canvas


def render_all(out_dir: str = "docs", seed: int = 0) -> list[str]:
    """Write one PNG per variant of every suite into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for suite, variants in SUITE_SPECS.items():
        for variant, spec in variants.items():
            path = os.path.join(out_dir, frame_filename(suite, variant))
            render_variant_frame(spec.env_id, seed).save(path)
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render one frame per distractor-suite variant.")
    parser.add_argument("--out-dir", default="docs", help="folder for the PNGs (default: docs)")
    parser.add_argument("--seed", type=int, default=0, help="reset seed of every env (default: 0)")
    args = parser.parse_args(argv)
    for path in render_all(args.out_dir, args.seed):
        print(path)


if __name__ == "__main__":
    main()
