"""Looking inside modular cores: which RIM units / SRM modules are active at each step, and where
SRM's modules sit relative to the tokens they read.

- :func:`plot_active_units`: heatmap ``units x steps`` of the active mask of one episode.
- :func:`plot_srm_topology`: SRM module embeddings and encoded token positions on the sphere
  (3-D scatter; a PCA projection to 3-D when the embedding dimension is larger, a circle for 2-D),
  each token coloured by the module whose kernel weighs it most (grey: outside every support),
  next to the view grid coloured the same way: which module covers which part of the view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (evaluation runs headless)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from rimrl.evaluation.plots import save_figure  # noqa: E402

__all__ = ["module_colors", "plot_active_units", "plot_srm_topology", "topology_arrays"]

_OUTSIDE = (0.8, 0.8, 0.8, 1.0)
_ACTIVE, _INACTIVE = "#1f4e9c", "#f2f2f2"


def module_colors(n: int) -> np.ndarray:
    """``(n, 4)`` RGBA colours, one per module (tab10, then tab20 for more than 10)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return np.array([cmap(i % cmap.N) for i in range(n)])


def plot_active_units(active: np.ndarray, path: str | Path, title: str = "", unit_name: str = "unit") -> Path:
    """Heatmap of an ``(T, units)`` bool mask: one row per unit, one column per step; dark = active."""
    active = np.asarray(active, dtype=bool)
    if active.ndim != 2 or active.size == 0:
        raise ValueError(f"active must be a non-empty (steps, units) array, got shape {active.shape}")
    steps, units = active.shape
    fig, ax = plt.subplots(figsize=(min(16.0, 3.0 + steps * 0.08), 1.2 + 0.35 * units))
    ax.imshow(active.T, aspect="auto", interpolation="nearest", cmap=ListedColormap([_INACTIVE, _ACTIVE]), vmin=0, vmax=1)
    ax.legend(handles=[Patch(color=_ACTIVE, label="active"), Patch(facecolor=_INACTIVE, edgecolor="0.6", label="inactive")],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlabel("step")
    ax.set_ylabel(unit_name)
    ax.set_yticks(range(units))
    ax.set_title(title + (f"\nactive {active.mean():.0%} of {unit_name}-steps" if title else ""), fontsize=9)
    return save_figure(fig, path, dpi=100)


def topology_arrays(topology: dict[str, Any]) -> dict[str, np.ndarray]:
    """SRM ``core.topology()`` (torch tensors) as numpy arrays."""
    return {key: np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value) for key, value in topology.items()}


def _project(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Project ``points`` ``(n, d)`` onto the top-3 principal axes of ``reference`` when ``d > 3``."""
    if points.shape[1] <= 3:
        return points
    centred = reference - reference.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return points @ vt[:3].T


def _token_owner(kernel: np.ndarray) -> np.ndarray:
    """Index of the module weighing each token most, -1 where every kernel weight is 0 (outside all supports)."""
    owner = kernel.argmax(axis=0)
    owner[kernel.max(axis=0) <= 0] = -1
    return owner


def plot_srm_topology(topology: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Plot SRM's geometry (see the module docstring) from ``core.topology()``."""
    topo = topology_arrays(topology)
    modules, tokens, kernel = topo["module_embeddings"], topo["token_embeddings"], topo["kernel"]
    positions = topo.get("token_positions")
    colors = module_colors(modules.shape[0])
    owner = _token_owner(kernel)
    token_colors = np.array([colors[o] if o >= 0 else _OUTSIDE for o in owner])

    fig = plt.figure(figsize=(11, 5))
    if modules.shape[1] == 2:
        ax = fig.add_subplot(1, 2, 1)
        circle = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(circle), np.sin(circle), color="0.85", lw=1)
        ax.scatter(tokens[:, 0], tokens[:, 1], c=token_colors, s=18, edgecolors="none")
        ax.scatter(modules[:, 0], modules[:, 1], c=colors, s=160, marker="*", edgecolors="k")
        ax.set_aspect("equal")
    else:
        ax = fig.add_subplot(1, 2, 1, projection="3d")
        m3, t3 = _project(modules, np.vstack([modules, tokens])), _project(tokens, np.vstack([modules, tokens]))
        u, v = np.mgrid[0 : 2 * np.pi : 24j, 0 : np.pi : 12j]
        ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.9", lw=0.5)
        ax.scatter(t3[:, 0], t3[:, 1], t3[:, 2], c=token_colors, s=14, depthshade=False)
        ax.scatter(m3[:, 0], m3[:, 1], m3[:, 2], c=colors, s=180, marker="*", edgecolors="k", depthshade=False)
        for i, point in enumerate(m3):
            ax.text(*(point * 1.12), str(i), fontsize=8)
    ax.set_title("modules (stars) and encoded token positions\ncoloured by strongest kernel; grey: outside all supports", fontsize=9)

    grid_ax = fig.add_subplot(1, 2, 2)
    if positions is not None and positions.ndim == 2 and positions.shape[1] >= 2:
        spatial = positions[:, 2] == 0 if positions.shape[1] >= 3 else np.ones(len(positions), dtype=bool)
        grid_ax.scatter(positions[spatial, 0], positions[spatial, 1], c=token_colors[spatial], s=260, marker="s", edgecolors="w")
        coverage = (kernel[:, spatial] > 0).sum(axis=0)
        for (x, y), count in zip(positions[spatial, :2], coverage, strict=True):
            grid_ax.text(x, y, str(count), ha="center", va="center", fontsize=7)
        grid_ax.set_aspect("equal")
        grid_ax.set_xlabel("token position x")
        grid_ax.set_ylabel("token position y (ahead)")
        grid_ax.set_title("token grid: owner module (colour), modules covering it (number)", fontsize=9)
    else:
        grid_ax.imshow(kernel, aspect="auto", cmap="viridis")
        grid_ax.set_xlabel("token")
        grid_ax.set_ylabel("module")
        grid_ax.set_title("kernel K(module, token)", fontsize=9)
    fig.legend(handles=_topology_legend(colors, bool((owner < 0).any()), positions is not None), fontsize=8,
               loc="center left", bbox_to_anchor=(1.0, 0.5), borderaxespad=0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


def _topology_legend(colors: np.ndarray, outside: bool, grid: bool) -> list[Line2D]:
    """Legend of :func:`plot_srm_topology`: one star per module, the grey of uncovered tokens, the marks."""
    handles = [Line2D([], [], ls="", marker="*", ms=11, markerfacecolor=color, markeredgecolor="k", label=f"module {i}")
               for i, color in enumerate(colors)]
    handles.append(Line2D([], [], ls="", marker="o", ms=6, color="0.3", label="token (colour: module weighing it most)"))
    if outside:
        handles.append(Line2D([], [], ls="", marker="o", ms=6, color=_OUTSIDE, label="token outside all supports"))
    if grid:
        handles.append(Line2D([], [], ls="", marker="s", ms=8, color="0.6", label="view cell; number = modules covering it"))
    return handles
