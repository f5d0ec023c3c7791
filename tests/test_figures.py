"""Figures a reader cannot misread (issue 15, item 6): what each plot must show, checked on the
matplotlib objects and on the written files. No model is trained here."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from PIL import Image  # noqa: E402

from rimrl.evaluation import EpisodeRecord, aggregate_rows, summarize  # noqa: E402
from rimrl.evaluation.gifs import annotate_frame, frame_captions, write_gif  # noqa: E402
from rimrl.evaluation.plots import plot_results  # noqa: E402


def _row(core: str, seed: int, variant: str, successes: list[bool]):
    records = [EpisodeRecord(0, i, 0, float(s), 5, s) for i, s in enumerate(successes)]
    env = {"train": "rimrl/Pickup-Train-v0", "novel": "rimrl/Pickup-Novel-v0"}[variant]
    return summarize(records, model=f"{core}-seed{seed}", run=core, model_path=core, core=core, seed=seed,
                     train_env="rimrl/Pickup-Train-v0", env=env, variant=variant, deterministic=False, eval_seed=0, n_envs=1)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures that ``save_figure`` writes, kept open for inspection."""
    from rimrl.evaluation import plots

    figures: list[plt.Figure] = []
    real_close = plt.close
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: figures.append(fig) if fig is not None else real_close())
    yield figures
    for fig in figures:
        real_close(fig)


def test_a_core_at_zero_success_is_still_named_and_shows_its_seeds(tmp_path: Path, captured: list[plt.Figure]) -> None:
    rows = [
        _row("lstm", 0, "train", [False] * 4), _row("lstm", 1, "train", [False] * 4),
        _row("lstm", 0, "novel", [False] * 4), _row("lstm", 1, "novel", [False] * 4),
        _row("rim", 0, "train", [True, True, False, True]), _row("rim", 0, "novel", [True, False, False, False]),
    ]
    path = plot_results(rows, aggregate_rows(rows, reps=200), tmp_path / "results.png")
    ax = captured[0].axes[0]
    # Every bar has its core's name on the x axis, the 0 % ones too.
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lstm", "lstm", "rim", "rim"]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("0%") == 2  # the value is written on the zero-height lstm bars
    # One dot per model on its bar: two lstm seeds x two variants + one rim model x two variants.
    dots = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert len(dots) == 6 and sorted(dots[:, 1].tolist()).count(0.0) == 4
    # Across-seed and within-model whiskers are both drawn, and both named in the legend.
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("across seeds" in t for t in legend) and any("within one model" in t for t in legend)
    assert "one model (seed)" in legend
    with Image.open(path) as image:
        assert image.size[0] > 400 and image.size[1] > 300


def test_titles_are_never_cut(tmp_path: Path, captured: list[plt.Figure]) -> None:
    rows = [_row("lstm", 0, "train", [True, False]), _row("rim", 0, "train", [True, True])]
    plot_results(rows, [], tmp_path / "results.png")
    fig = captured[0]
    renderer = fig.canvas.get_renderer()
    # Saved with bbox_inches="tight": the written image holds the figure's whole tight bbox.
    box = fig.get_tightbbox(renderer)
    title = fig.axes[0].title.get_window_extent(renderer)
    assert box.x0 * fig.dpi <= title.x0 and title.x1 <= box.x1 * fig.dpi + 1


def test_srm_topology_has_a_legend(tmp_path: Path, captured: list[plt.Figure]) -> None:
    from rimrl.evaluation.activations import plot_srm_topology

    rng = np.random.default_rng(0)
    modules = rng.normal(size=(3, 3))
    tokens = rng.normal(size=(9, 3))
    modules /= np.linalg.norm(modules, axis=1, keepdims=True)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    kernel = np.clip(modules @ tokens.T, 0, None)
    positions = np.array([[x, y, 0] for y in range(3) for x in range(3)], dtype=float)
    plot_srm_topology({"module_embeddings": modules, "token_embeddings": tokens, "kernel": kernel,
                       "token_positions": positions}, tmp_path / "topo.png", "srm")
    legends = [fig.legends for fig in captured] + [[ax.get_legend() for ax in fig.axes if ax.get_legend()] for fig in captured]
    texts = [t.get_text() for group in legends for legend in group for t in legend.get_texts()]
    assert {"module 0", "module 1", "module 2"} <= set(texts)
    assert any("outside" in t for t in texts)


def test_active_unit_heatmap_says_which_colour_is_active(tmp_path: Path, captured: list[plt.Figure]) -> None:
    from rimrl.evaluation.activations import plot_active_units

    plot_active_units(np.eye(4, dtype=bool), tmp_path / "active.png", "rim", "unit")
    texts = [t.get_text() for fig in captured for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert texts == ["active", "inactive"]


def test_a_one_step_episode_gif_has_several_frames(tmp_path: Path) -> None:
    frame = np.zeros((32, 32, 3), dtype=np.uint8)
    # Before the fix, identical frames (the held last frame) collapsed into a single GIF frame.
    path = write_gif([frame], tmp_path / "one.gif")
    with Image.open(path) as image:
        assert image.n_frames >= 2
    path = write_gif([frame, frame], tmp_path / "two.gif", captions=frame_captions([0], [1.0]))
    with Image.open(path) as image:
        assert image.n_frames >= 3


def test_gif_frames_carry_step_action_and_reward(tmp_path: Path) -> None:
    captions = frame_captions([2, 0], [0.0, 0.9])
    assert captions == ["step 0 (start)", "step 1  action 2  reward 0  return 0",
                        "step 2  action 0  reward 0.9  return 0.9", "end: return 0.9 in 2 steps"]
    frame = np.full((40, 40, 3), 255, dtype=np.uint8)
    annotated = annotate_frame(frame, captions[1])
    assert annotated.shape[1] == 40 and annotated.shape[0] > 40  # a caption strip under the frame
    assert np.array_equal(annotated[:40], frame)  # the frame itself is untouched
    strip = annotated[40:]
    assert (strip != strip[0, 0]).any()  # text is drawn on the strip
    assert not np.array_equal(annotate_frame(frame, captions[1]), annotate_frame(frame, captions[2]))
    names = frame_captions([2], [1.0], action_names=["left", "right", "forward"])
    assert names[1] == "step 1  action forward  reward 1  return 1"
