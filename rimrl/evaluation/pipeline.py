"""One evaluation end to end: resolve models, play every variant, summarise, aggregate, write files.

:func:`evaluate` is what ``evaluate.py`` / ``rimrl-evaluate`` run; it is also the library entry
point for notebooks. Bad input raises :class:`~rimrl.evaluation.environments.EvaluationInputError`
or :class:`rimrl.agents.AgentLoadError`, both ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecEnv

from rimrl.agents import load_agent
from rimrl.agents.factory import space_mismatch
from rimrl.agents.storage import DirectoryBusyError, directory_lock, writable_dir_problem
from rimrl.envs import default_deterministic, is_atari
from rimrl.evaluation.activations import plot_active_units, plot_srm_topology
from rimrl.evaluation.environments import (
    ATARI_FRAME_CAP,
    EvaluationInputError,
    VariantEnv,
    eval_env_kwargs,
    make_eval_env,
    make_single_env,
    resolve_variants,
)
from rimrl.evaluation.gifs import frame_captions, slug, write_gif
from rimrl.evaluation.plots import plot_comparison, plot_results
from rimrl.evaluation.report import EvaluationReport, write_outputs
from rimrl.evaluation.results import aggregate_rows, compare_games, episode_rows, summarize
from rimrl.evaluation.rollout import EpisodeRecord, EpisodeTrace, run_episodes, trace_episode
from rimrl.evaluation.sources import ModelSource, core_of, label_sources, resolve_sources

__all__ = ["EvaluationOptions", "ProgressCallback", "action_mode", "check_spaces", "evaluate"]

#: Steps after which a GIF/activation trace stops (a full Atari game can last 27,000 agent steps).
TRACE_MAX_STEPS = 3000

#: ``(description, episodes done, episodes in total)``: called once with 0 when a model x variant
#: starts and after each of its episodes.
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class EvaluationOptions:
    """Settings of one evaluation (the CLI's arguments; see ``docs/evaluate.md``)."""

    paths: Sequence[str | Path]
    env: str | None = None
    variants: Sequence[str] | None = None
    episodes: int = 100
    seed: int = 1000
    #: Greedy (True) or sampled (False) actions for every model; None: per model, see :func:`action_mode`.
    deterministic: bool | None = None
    n_envs: int = 8
    out: str | Path | None = None
    plot: bool = False
    gif: int = 0
    activations: bool = False
    compare: bool = False
    challenger: str = "rim"
    baseline: str = "lstm"
    checkpoint: str = "final"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    #: ``None``: the pickle-free weights files when present, else unpickle a run directory's zip
    #: (with a warning) and refuse a bare one; ``True``: weights files only; ``False``: unpickle.
    safe: bool | None = None

    def validate(self) -> None:
        """Reject bad numbers and combinations before any model is loaded."""
        numbers = (("episodes", self.episodes, 1), ("n_envs", self.n_envs, 1), ("gif", self.gif, 0), ("seed", self.seed, 0))
        for name, value, minimum in numbers:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise EvaluationInputError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}")
        if self.checkpoint not in ("final", "best"):
            raise EvaluationInputError(f"checkpoint must be 'final' or 'best', got {self.checkpoint!r}")
        if (self.plot or self.gif or self.activations or self.compare) and self.out is None:
            raise EvaluationInputError("--plot, --gif, --activations and --compare write files: pass --out DIR")
        if self.challenger == self.baseline:
            raise EvaluationInputError(f"the compared cores must differ, got {self.challenger!r} twice")
        problem = writable_dir_problem(self.out) if self.out is not None else None
        if problem is not None:  # checked now: after the rollouts it would be too late
            raise EvaluationInputError(f"cannot write --out: {problem}")

    def settings(self) -> dict[str, Any]:
        """The settings recorded in ``results.json``."""
        return {
            "episodes": self.episodes,
            "seed": self.seed,
            "deterministic": self.deterministic,
            "n_envs": self.n_envs,
            "checkpoint": self.checkpoint,
            "variants": list(self.variants) if self.variants else "all",
        }


def action_mode(source: ModelSource, deterministic: bool | None = None) -> bool:
    """Whether ``source`` is evaluated with greedy actions.

    ``deterministic`` (``--deterministic`` / ``--stochastic``) decides when given. Otherwise the
    mode of the run's own training-time evaluation (``config.yml``'s ``eval_deterministic``), so
    that the final evaluation plays as the one that picked ``best_model.zip`` did; for a model
    without one, the env's default (:func:`rimrl.envs.default_deterministic`: sampled for
    MiniGrid/BabyAI and Atari, greedy otherwise).
    """
    if deterministic is not None:
        return deterministic
    if source.eval_deterministic is not None:
        return source.eval_deterministic
    return default_deterministic(source.env_id or "")


def check_spaces(model: RecurrentPPO, env: VecEnv, env_id: str, path: Path) -> None:
    """Raise :class:`AgentLoadError` when ``env``'s observation or action space differs from the model's."""
    for kind in ("observation", "action"):
        saved, given = getattr(model, f"{kind}_space"), getattr(env, f"{kind}_space")
        if saved != given:
            raise space_mismatch(kind, given, saved, repr(str(path)), env=f"env {env_id!r}")


@dataclass
class _Loaded:
    source: ModelSource
    model: RecurrentPPO
    variants: list[VariantEnv]
    deterministic: bool  # its action mode (action_mode)


def _load(sources: Sequence[ModelSource], options: EvaluationOptions) -> list[_Loaded]:
    """Resolve every source's variants first (cheap, fails fast), then load the models."""
    planned = [(source, resolve_variants(source.env_id or "", options.variants)) for source in sources]
    loaded = []
    for source, variants in planned:
        model = load_agent(source.path, env=None, device=options.device, safe=options.safe)
        source.core = source.core or core_of(model)
        loaded.append(_Loaded(source, model, variants, action_mode(source, options.deterministic)))
    label_sources([item.source for item in loaded])
    return loaded


def _kwargs_for(item: _Loaded, env_id: str, options: EvaluationOptions) -> dict[str, Any]:
    return eval_env_kwargs(env_id, item.model.observation_space, {**item.source.env_kwargs, **options.env_kwargs})


def _traces(
    item: _Loaded, variant: VariantEnv, options: EvaluationOptions, count: int, render: bool
) -> tuple[list[EpisodeTrace], list[str] | None]:
    """``count`` single-env episodes (seeded ``seed + k``) for GIFs and activation maps, and the
    env's action names (for the GIF captions)."""
    single = make_single_env(variant.env_id, _kwargs_for(item, variant.env_id, options))
    try:
        return [
            trace_episode(
                item.model,
                reset=lambda k=k: single.reset(options.seed + k),
                step=single.step,
                render=single.render if render else None,
                deterministic=item.deterministic,
                seed=options.seed + k,
                max_steps=TRACE_MAX_STEPS,
            )
            for k in range(count)
        ], single.action_names
    finally:
        single.close()


def _inspect(item: _Loaded, variant: VariantEnv, options: EvaluationOptions, report: EvaluationReport) -> None:
    """GIFs and activation maps of one model on one variant."""
    modular = item.source.core in ("rim", "srm")
    count = max(options.gif, 1 if options.activations and modular else 0)
    if count == 0:
        return
    out = Path(options.out or ".")
    traces, action_names = _traces(item, variant, options, count, render=options.gif > 0)
    name = f"{slug(item.source.label)}_{slug(variant.variant)}"
    for k, trace in enumerate(traces[: options.gif]):
        captions = frame_captions(trace.actions, trace.rewards, action_names, truncated=trace.truncated_by_trace)
        report.files.append(write_gif(trace.frames, out / "gifs" / f"{name}_ep{k}.gif", captions=captions))
    if options.activations and modular and traces[0].active is not None:
        unit = "unit" if item.source.core == "rim" else "module"
        title = f"{item.source.label} on {variant.variant}: active {unit}s (episode 0, return {traces[0].episode_return:.2f})"
        report.files.append(plot_active_units(traces[0].active, out / "activations" / f"{name}_active.png", title, unit))


def _inspect_topology(item: _Loaded, options: EvaluationOptions, report: EvaluationReport) -> None:
    core = getattr(item.model.policy, "core", None)
    if options.activations and item.source.core == "srm" and hasattr(core, "topology"):
        path = Path(options.out or ".") / "activations" / f"{slug(item.source.label)}_srm_topology.png"
        report.files.append(plot_srm_topology(core.topology(), path, f"{item.source.label}: SRM geometry"))


def _check_comparable(loaded: Sequence[_Loaded], options: EvaluationOptions) -> None:
    """``--compare`` needs, on some Atari game, a model of each compared core (checked before any rollout)."""
    cores_by_game: dict[str, set[str]] = {}
    for item in loaded:
        if is_atari(item.source.env_id or ""):
            for variant in item.variants:
                cores_by_game.setdefault(variant.env_id, set()).add(item.source.core or "")
    if not any({options.challenger, options.baseline} <= cores for cores in cores_by_game.values()):
        raise EvaluationInputError(
            f"--compare needs Atari models of both cores {options.challenger!r} and {options.baseline!r} on at least one game"
        )


def evaluate(
    options: EvaluationOptions, log: Callable[[str], None] | None = None, progress: ProgressCallback | None = None
) -> EvaluationReport:
    """Run the evaluation described by ``options``; write its files when ``options.out`` is set.

    ``log`` receives one line per model x variant as it starts; ``progress`` the episodes done
    (see :data:`ProgressCallback`). Neither prints anything unless the caller's callable does.
    """
    say = log or (lambda message: None)
    th.set_num_threads(1)  # small recurrent nets: intra-op threads only add contention on a shared machine
    options.validate()
    sources = resolve_sources(options.paths, env=options.env, checkpoint=options.checkpoint)
    loaded = _load(sources, options)
    if options.compare:
        _check_comparable(loaded, options)
    if options.out is None:
        return _evaluate(loaded, options, say, progress)
    try:
        with directory_lock(options.out, what="--out folder"):  # two evaluations must not interleave files
            return _evaluate(loaded, options, say, progress)
    except DirectoryBusyError as error:
        raise EvaluationInputError(str(error)) from None


def _frame_cap(env_kwargs: dict[str, Any]) -> tuple[int, int]:
    """An Atari eval env's cap: (emulator frames, frame skip)."""
    return int(env_kwargs.get("max_frames_per_episode", ATARI_FRAME_CAP)), int(env_kwargs.get("frame_skip", 4))


def _counting(progress: ProgressCallback, what: str, total: int) -> Callable[[EpisodeRecord], None]:
    """A ``run_episodes`` ``on_episode`` that reports ``(what, done, total)`` to ``progress``."""
    done = [0]

    def on_episode(record: EpisodeRecord) -> None:
        done[0] += 1
        progress(what, done[0], total)

    progress(what, 0, total)
    return on_episode


def _settle_modes(loaded: Sequence[_Loaded], report: EvaluationReport) -> None:
    """Record the action mode(s) used in the settings; say so when the models differ."""
    modes = {item.deterministic for item in loaded}
    if len(modes) == 1:
        report.settings["deterministic"] = modes.pop()
        return
    report.settings["deterministic"] = "per model"
    greedy = ", ".join(item.source.label for item in loaded if item.deterministic)
    report.notes.append(f"action modes differ between the models (each as its run's training-time evaluation): "
                        f"greedy for {greedy}, sampled for the others; the `deterministic` column says which")


def _evaluate(
    loaded: list[_Loaded], options: EvaluationOptions, say: Callable[[str], None], progress: ProgressCallback | None
) -> EvaluationReport:
    report = EvaluationReport(settings=options.settings())
    _settle_modes(loaded, report)
    caps: set[tuple[int, int]] = set()
    for item in loaded:
        for variant in item.variants:
            kwargs = _kwargs_for(item, variant.env_id, options)
            mode = "greedy" if item.deterministic else "sampled"
            what = f"{item.source.label}: {variant.variant} ({variant.env_id})"
            cap = ""
            if is_atari(variant.env_id):
                caps.add(_frame_cap(kwargs))
                cap = f", whole games of at most {_frame_cap(kwargs)[0]:,} frames"
            say(f"{what}, {options.episodes} episodes, {mode} actions{cap}")
            on_episode = None if progress is None else _counting(progress, what, options.episodes)
            venv = make_eval_env(variant.env_id, options.n_envs, options.seed, kwargs)
            try:
                check_spaces(item.model, venv, variant.env_id, item.source.path)
                records = run_episodes(item.model, venv, options.episodes, item.deterministic, seed=options.seed,
                                       on_episode=on_episode)
            finally:
                venv.close()
            row = summarize(
                records,
                model=item.source.label,
                run=item.source.run,
                model_path=str(item.source.path),
                core=item.source.core or "",
                seed=item.source.seed,
                train_env=item.source.env_id or "",
                env=variant.env_id,
                variant=variant.variant,
                deterministic=item.deterministic,
                eval_seed=options.seed,
                n_envs=options.n_envs,
            )
            report.rows.append(row)
            report.episodes.extend(episode_rows(records, row))
            if options.out is not None:
                _inspect(item, variant, options, report)
        if options.out is not None:
            _inspect_topology(item, options, report)
        if options.activations and item.source.core not in ("rim", "srm"):
            report.notes.append(f"--activations: {item.source.label} has a {item.source.core} core (no active units to show)")
    for frames, skip in sorted(caps):
        report.notes.append(f"Atari: whole games (all lives, FIRE pressed after each life loss), cut off at "
                            f"{frames:,} emulator frames ({frames // skip:,} agent steps at frame skip {skip}; "
                            f"--env-kwarg max_frames_per_episode=N changes it)")
    if caps:
        report.settings["atari_frame_cap"] = sorted(frames for frames, _ in caps)[-1]
    report.aggregates = aggregate_rows(report.rows, seed=options.seed)
    if options.compare:
        report.comparison = compare_games(report.rows, options.challenger, options.baseline)
    if options.out is not None:
        try:
            _write(report, Path(options.out), options)
        except OSError as error:  # disk full, folder removed mid-run: keep the results elsewhere
            fallback = Path(tempfile.mkdtemp(prefix="rimrl-evaluation-"))
            _write(report, fallback, options)
            report.write_error = (f"could not write to {str(options.out)!r} ({error.strerror or error}); the results "
                                  f"were written to {str(fallback)!r} instead")
    return report


def _write(report: EvaluationReport, out: Path, options: EvaluationOptions) -> None:
    report.files = write_outputs(report, out) + report.files
    if options.plot:
        report.files.append(plot_results(report.rows, report.aggregates, out / "results.png"))
    if report.comparison:
        report.files.append(plot_comparison(report.comparison, out / "atari_compare.png"))
