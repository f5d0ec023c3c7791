"""The training library (:mod:`rimrl.experiments`) and its thin CLI (issue 15, items 1 and 7).

- the CLI modules parse arguments and call the library: each stays small;
- the library imports nothing from :mod:`rimrl.cli`, and no module-level import cycle joins them;
- the run's callbacks are SB3's (``EvalCallback`` / ``CheckpointCallback`` subclasses), so SB3's
  ``callback_after_eval`` works with rimrl's recurrent-aware evaluation and its files.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rimrl"
#: "Aim for each CLI module under ~300 lines" (issue 15, item 7).
CLI_MAX_LINES = 300


def module_name(path: Path) -> str:
    """``rimrl/experiments/run.py`` -> ``rimrl.experiments.run`` (``__init__.py``: the package)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(path: Path) -> set[str]:
    """The ``rimrl`` modules ``path`` imports at module level (imports inside functions run on use
    and cannot form an import-time cycle)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "rimrl"}


def all_imports(path: Path) -> set[str]:
    """Every ``rimrl`` module named in an import anywhere in ``path`` (function-level ones too),
    except under ``if TYPE_CHECKING:`` (never run)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name.split(".")[0] == "rimrl"}


@pytest.mark.parametrize("name", ["train.py", "evaluate.py", "sweep.py", "common.py"])
def test_cli_modules_are_thin(name: str) -> None:
    lines = len((PACKAGE / "cli" / name).read_text().splitlines())
    assert lines <= CLI_MAX_LINES, f"rimrl/cli/{name} has {lines} lines; move its logic into the library"


def test_the_library_imports_nothing_from_the_cli() -> None:
    library = [p for sub in ("experiments", "agents", "envs", "evaluation", "cores", "policies")
               for p in sorted((PACKAGE / sub).rglob("*.py"))]
    assert any(p.parent.name == "experiments" for p in library), "rimrl/experiments is missing"
    offenders = {module_name(p): sorted(n for n in all_imports(p) if n.startswith("rimrl.cli"))
                 for p in library}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_no_import_cycle_through_the_library_or_the_cli() -> None:
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph = {name: {m for m in top_level_imports(path) if m in modules and m != name}
             for name, path in modules.items()}

    def cycle_from(start: str) -> list[str] | None:
        """A path of module-level imports from ``start`` back to itself, if any (depth first)."""
        stack, seen = [(start, [start])], {start}
        while stack:
            node, path = stack.pop()
            for dep in sorted(graph[node]):
                if dep == start:
                    return [*path, dep]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
        return None

    cycles = {name: cycle_from(name) for name in modules if name.startswith(("rimrl.experiments", "rimrl.cli"))}
    assert not {k: v for k, v in cycles.items() if v}, cycles


def test_no_two_modules_import_each_other() -> None:
    """Not even on use (function-level imports): ``cli/train.py`` and ``cli/sweep.py`` used to."""
    paths = [p for sub in ("cli", "experiments") for p in sorted((PACKAGE / sub).glob("*.py"))]
    imports = {module_name(p): all_imports(p) for p in paths}
    mutual = sorted((a, b) for a in imports for b in imports if a < b and b in imports[a] and a in imports[b])
    assert not mutual, mutual


def test_each_library_module_imports_alone_without_the_cli() -> None:
    """In a fresh interpreter per module: no cycle bites whatever is imported first, and nothing
    pulls in ``rimrl.cli``."""
    names = [module_name(p) for p in sorted((PACKAGE / "experiments").glob("*.py"))]
    script = (
        "import importlib, sys\n"
        "importlib.import_module(sys.argv[1])\n"
        "bad = sorted(m for m in sys.modules if m.startswith('rimrl.cli'))\n"
        "assert not bad, bad\n"
    )
    for name in names:
        done = subprocess.run([sys.executable, "-c", script, name], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{name}: {done.stderr[-2000:]}"


def test_run_callbacks_are_sb3_callbacks() -> None:
    from rimrl.experiments.callbacks import RecurrentEvalCallback, RunCheckpointCallback

    assert issubclass(RecurrentEvalCallback, EvalCallback)
    assert issubclass(RunCheckpointCallback, CheckpointCallback)


def test_library_input_errors_are_its_own_and_value_errors(tmp_path: Path) -> None:
    from rimrl.cli.common import CLIError
    from rimrl.experiments import ExperimentInputError
    from rimrl.experiments.options import TrainOptions
    from rimrl.experiments.validation import resolve_trial

    with pytest.raises(ExperimentInputError, match="unknown core 'tcn'") as caught:
        resolve_trial(TrainOptions(core="tcn", log_folder=str(tmp_path)))
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, CLIError)
    assert caught.value.exit_code == 2


class _StopAfter(BaseCallback):
    """SB3 ``callback_after_eval``: stop training after ``n`` evaluations."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def _on_step(self) -> bool:
        return self.n_calls < self.n


def test_eval_callback_runs_sb3_child_callbacks_and_writes_rimrl_files(tmp_path: Path) -> None:
    from rimrl.agents import make_agent
    from rimrl.agents.training import EvalHistory
    from rimrl.envs import make_env
    from rimrl.experiments.callbacks import RecurrentEvalCallback

    env = make_env("rimrl/Pickup-Train-v0", n_envs=2, seed=0)
    eval_env = make_env("rimrl/Pickup-Train-v0", n_envs=2, seed=100)
    model = make_agent(env, core="lstm", seed=0, n_steps=32, batch_size=32, n_epochs=1,
                       **{"policy_kwargs.lstm_hidden_size": 16})
    history = EvalHistory(tmp_path / "evaluations.npz")
    new_best = _StopAfter(10**9)
    callback = RecurrentEvalCallback(eval_env, history, tmp_path / "best_model.zip", n_eval_episodes=2,
                                     eval_freq=64, deterministic=False, seed=7,
                                     callback_on_new_best=new_best, callback_after_eval=_StopAfter(2))
    try:
        model.learn(64 * 10, callback=callback)
    finally:
        env.close()
        eval_env.close()
    # Evaluations at 64 and 128 (between rollouts); the second one's child callback stopped
    # training during the next rollout, well before 640 steps.
    assert history.timesteps == [64, 128]
    assert model.num_timesteps < 64 * 10
    assert new_best.n_calls >= 1 and callback.best_mean_reward > -np.inf
    assert callback.last_mean_reward == pytest.approx(np.mean(history.results[-1]))
    assert callback.evaluations_timesteps is history.timesteps
    with np.load(tmp_path / "evaluations.npz") as data:
        assert list(data["timesteps"]) == [64, 128] and data["successes"].shape == (2, 2)
    assert (tmp_path / "best_model.zip").is_file() and not list(tmp_path.glob(".tmp-*"))
