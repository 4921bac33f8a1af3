"""One run of a search-gradient strategy: the generation loop of ``scorefn.es.minimize``,
compiled (``evaluator="jax"``) or stepping a Python-side evaluator, with its checkpoint,
progress, stopping criteria and result."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import guards
from scorefn.es.evaluators import BatchEvaluator
from scorefn.es.strategy import Strategy
from scorefn.runs import Run, describe, saved_figure
from scorefn.runs.checkpoints import restore
from scorefn.runs.compiler_options import WIDE_REDUCTIONS
from scorefn.runs.devices import mesh_of, replicated, split
from scorefn.runs.export_cache import cached_jit

CHECKPOINT_VERSION = 4  # 2: xNES state carries its (adapted) η_σ; 3: the strategy's options; 4: the settings


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Every option of one run, as ``minimize`` documents them (``key`` already made from
    ``seed``): one record that restarts copy with ``dataclasses.replace``."""

    sigma0: float
    key: jax.Array
    max_evaluations: int = 100_000
    target_f: float | None = None
    tol_x: float = 1e-12
    tol_f: float = 0.0
    stagnation: int | None = None
    nan_policy: str = "penalize"
    evaluator: str = "jax"
    workers: int | None = None
    ray_address: str | None = None
    evaluation_timeout: float | None = None
    generations_per_call: int = 50
    devices: Any = None
    progress: bool = False
    plot: str | None = None
    checkpoint: str | None = None
    resume: bool = False
    overwrite: bool = False


@dataclasses.dataclass
class OptimizeResult:
    """What ``minimize`` found, and how."""

    x: np.ndarray
    f: float
    evaluations: int
    generations: int
    stop_reason: str
    wall_s: float
    history: list[tuple[int, float]]  # (evaluations, best f so far) after each generation
    success: bool

    def as_dict(self) -> dict[str, Any]:
        return {"best_f": self.f, "evaluations": self.evaluations, "generations": self.generations,
                "stop_reason": self.stop_reason, "wall_s": self.wall_s, "success": self.success,
                "best_x": self.x.tolist()}


def run_strategy(f: Callable, x0: Any, strat: Strategy, options: RunOptions) -> OptimizeResult:
    """One run of ``strat`` from ``x0`` until a stopping criterion (``minimize``'s loop, its
    arguments checked there)."""
    o = options
    sigma0, key, max_evaluations, nan_policy, evaluator = (
        o.sigma0, o.key, o.max_evaluations, o.nan_policy, o.evaluator)
    target_f, tol_x, tol_f, stagnation = o.target_f, o.tol_x, o.tol_f, o.stagnation
    checkpoint, resume, plot = o.checkpoint, o.resume, o.plot
    x0 = jnp.asarray(x0, jnp.result_type(float))
    d = x0.shape[0]
    # First, so that the compilation cache is on before anything compiles.
    run = Run("scorefn.es", CHECKPOINT_VERSION, checkpoint=checkpoint, resume=resume,
              settings=None if checkpoint is None else run_settings(
                  f, x0, key, sigma0, nan_policy, evaluator),
              may_change="max_evaluations and the stopping criteria", progress=o.progress,
              description=strat.name, total=max_evaluations, unit="evals", field="best f",
              overwrite=o.overwrite)
    state = _compiled_init(strat)(key, x0, float(sigma0))
    popsize = strat.population_size(state)

    if evaluator == "jax":
        run_chunk = compiled_generations(strat, f, o.generations_per_call, nan_policy,
                                         mesh_of(o.devices, "population"))
    else:
        ask, tell = _compiled_ask_tell(strat)

    best_x, best_f = x0, jnp.asarray(jnp.inf, x0.dtype)
    # One record per generation run, (evaluations, best f, search scale, spread of f): always
    # in step with the strategy state, so that a checkpoint can be resumed exactly.
    records: list[tuple[int, float, float, float]] = []
    if run.restored is not None:
        payload = run.restored
        if payload["strategy"] != describe(strat):
            # the same state under other options would continue as a different algorithm
            raise ValueError(f"checkpoint {checkpoint} was written by strategy "
                             f"{payload['strategy']}; resume it with that strategy, not "
                             f"{describe(strat)}")
        state = restore(payload["state"], like=state)
        best_x, best_f = restore(payload["best_x"]), restore(payload["best_f"])
        records = [tuple(r) for r in payload["records"]]
        run.announce_resume(records[-1][0] if records else 0, max_evaluations, "evaluation")
    stop_reason, stop_at = "max_evaluations", None
    since_improvement, last_best = 0, math.inf
    for _, b, _, _ in records:  # replay the counters of a resumed run
        since_improvement = 0 if b < last_best else since_improvement + 1
        last_best = min(last_best, b)
    started = time.perf_counter()
    batch_evaluator = None if evaluator == "jax" else BatchEvaluator(
        evaluator, f, o.workers, o.ray_address, o.evaluation_timeout)
    try:
        with run:
            while (records[-1][0] if records else 0) < max_evaluations:
                if evaluator == "jax":
                    (state, best_x, best_f), (bests, best_xs, scales, spreads) = run_chunk(
                        (state, best_x, best_f))
                    bests, best_xs, scales, spreads = (
                        np.asarray(a) for a in (bests, best_xs, scales, spreads))
                else:
                    x, state = ask(state)
                    values = batch_evaluator(np.asarray(x))
                    fitness = np.asarray(_checked(jnp.asarray(values), x), np.float64)
                    if nan_policy == "raise" and _nan_message(fitness):
                        raise ValueError(_nan_message(fitness))
                    fitness = np.where(np.isfinite(fitness), fitness, np.inf)
                    state = tell(state, x, jnp.asarray(fitness, x.dtype))
                    i = int(np.argmin(fitness))
                    if fitness[i] < float(best_f):
                        best_x, best_f = x[i], jnp.asarray(fitness[i])
                    bests, best_xs = np.array([float(best_f)]), np.asarray(best_x)[None]
                    scales = np.array([float(strat.scale(state))])
                    spreads = np.array([fitness.max() - fitness.min()])
                first_new = len(records)
                evaluations = records[-1][0] if records else 0
                for b, sc, spread in zip(bests, scales, spreads):
                    evaluations += popsize
                    records.append((evaluations, float(b), float(sc), float(spread)))
                run.save(state=state, best_x=best_x, best_f=best_f,
                         records=list(records), strategy=describe(strat))
                for index in range(first_new, len(records)):
                    evaluations, b, sc, spread = records[index]
                    since_improvement = 0 if b < last_best else since_improvement + 1
                    last_best = min(last_best, b)
                    stop = None
                    if target_f is not None and b <= target_f:
                        stop = "target_f"
                    elif sc < tol_x:
                        stop = "tol_x"
                    elif np.isfinite(spread) and spread <= tol_f:
                        stop = "tol_f"
                    elif stagnation is not None and since_improvement >= stagnation:
                        stop = "stagnation"
                    elif evaluations >= max_evaluations:
                        stop = "max_evaluations"
                    if stop:
                        # the best of the generations counted, not of the whole chunk
                        stop_reason, stop_at = stop, index
                        best_x = best_xs[index - first_new]
                        best_f = jnp.asarray(records[index][1], best_f.dtype)
                        break
                run.advance(min(evaluations, max_evaluations), f"{last_best:.3e}")
                if stop_at is not None:
                    break
    finally:
        if batch_evaluator is not None:
            batch_evaluator.close()
    if stop_at is None:
        stop_at = len(records) - 1
    history = [(e, b) for e, b, _, _ in records[: stop_at + 1]]
    evaluations = history[-1][0] if history else 0
    wall = time.perf_counter() - started
    result = OptimizeResult(
        x=np.asarray(best_x), f=float(best_f), evaluations=evaluations,
        generations=len(history), stop_reason=stop_reason, wall_s=wall, history=history,
        success=target_f is not None and float(best_f) <= target_f,
    )
    if plot:
        plot_convergence(result, plot, title=f"{strat.name}, d = {d}")
    return result




def _objective_digest(f, x0) -> list[str]:
    """f at x0, at two fixed points near it and at one far out (where bounds' penalties
    act), to 10 significant digits: a changed objective (another function, other bounds) is
    told apart even when it has no name."""
    x0 = np.asarray(x0, np.float64)
    step = 0.1 * np.cos(np.arange(x0.size) + 1.0)
    points = (x0, x0 + step, x0 - 2 * step, x0 + 1e3 * np.sign(step))
    values = []
    for point in points:
        try:
            values.append(f"{float(f(jnp.asarray(point, jnp.result_type(float)))):.10g}")
        except Exception as error:  # noqa: BLE001 - f may be unusable outside the evaluator
            values.append(f"unavailable ({type(error).__name__})")
    return values


def run_settings(f, x0, key, sigma0, nan_policy, evaluator) -> dict:
    """What determines a run's trajectory (the strategy aside, recorded on its own); the
    stopping criteria and max_evaluations may change on resume (a run can be extended)."""
    return {"x0": np.asarray(x0, np.float64).tolist(),
            "key": np.asarray(jax.random.key_data(key)).tolist(),
            "sigma0": float(sigma0), "nan_policy": nan_policy,
            "evaluator": "jax" if evaluator == "jax" else "python-side",
            "objective": _objective_digest(f, x0)}


def _checked(fitness, x):
    fitness = jnp.asarray(fitness, x.dtype)
    if fitness.shape != (x.shape[0],):
        raise ValueError(
            f"f must return one scalar per candidate: expected {x.shape[0]} values, got shape "
            f"{fitness.shape}")
    return fitness


def _nan_message(fitness):
    bad = ~np.isfinite(fitness)
    if not bad.any():
        return None
    return (f"f returned {int(bad.sum())} non-finite value(s) in a generation (first at "
            f"candidate {int(np.argmax(bad))}); pass nan_policy='penalize' to rank them last")


@functools.lru_cache(maxsize=64)
def _compiled_init(strat):
    """Jitted ``init`` (σ0 static): one small program instead of a dozen eager ops, each of
    which XLA would compile on its own (0.5 s of a cold ``scorefn optimize`` for xNES)."""
    return cached_jit(strat.init, key=None, static_argnums=2)


@functools.lru_cache(maxsize=64)
def _compiled_ask_tell(strat):
    """Jitted ask and tell, cached per strategy so repeated runs (restarts) compile once."""
    return (cached_jit(strat.ask, key=None, compiler_options=WIDE_REDUCTIONS),
            cached_jit(strat.tell, key=None, compiler_options=WIDE_REDUCTIONS))


@functools.lru_cache(maxsize=64)
def compiled_generations(strat, f, generations: int, nan_policy: str, mesh: Any = None):
    """One jitted function running ``generations`` generations (ask, vmap(f), tell, track the
    best); cached so that repeated runs on the same problem compile once. With a ``mesh``
    the population is split across its devices for ``vmap(f)`` and the fitness gathered on
    every device before ``tell`` (``scorefn.runs.devices``)."""

    def generation(carry, _):
        state, best_x, best_f = carry
        x, state = strat.ask(state)
        fitness = replicated(_checked(jax.vmap(f)(split(x, mesh)), x), mesh)
        guard = guards.finite_guard((fitness, _nan_message)) if nan_policy == "raise" else 0.0
        fitness = jnp.where(jnp.isfinite(fitness), fitness, jnp.inf) + guard
        state = strat.tell(state, x, fitness)
        i = jnp.argmin(fitness)
        better = fitness[i] < best_f
        best_x = jnp.where(better, x[i], best_x)
        best_f = jnp.where(better, fitness[i], best_f)
        spread = jnp.max(fitness) - jnp.min(fitness)
        return (state, best_x, best_f), (best_f, best_x, strat.scale(state), spread)

    # key=None: f cannot be named; the persistent compilation cache still applies.
    return cached_jit(lambda carry: jax.lax.scan(generation, carry, None, length=generations),
                      key=None, compiler_options=WIDE_REDUCTIONS)


def plot_convergence(result: OptimizeResult, path: str, title: str = "") -> None:
    evals, best = zip(*result.history) if result.history else ((), ())
    with saved_figure(path) as (_, ax):
        ax.semilogy(evals, np.maximum(np.asarray(best, np.float64), 1e-300))
        ax.set_xlabel("function evaluations")
        ax.set_ylabel("best f so far")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
