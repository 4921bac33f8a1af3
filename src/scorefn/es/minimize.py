"""``scorefn.es.minimize``: run a strategy until a stopping criterion, with progress and a plot."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import guards, validation
from scorefn.es.bernoulli import bernoulli
from scorefn.es.bounds import penalized
from scorefn.es.categorical import categorical
from scorefn.es.openai_es import openai_es
from scorefn.es.snes import snes
from scorefn.es.strategy import Strategy
from scorefn.es.xnes import xnes
from scorefn.runs import Run, describe, saved_figure
from scorefn.runs.checkpoints import restore
from scorefn.runs.compiler_options import WIDE_REDUCTIONS
from scorefn.runs.export_cache import cached_jit

EVALUATORS = ("jax", "python", "processes", "ray")
STRATEGIES = {"snes": snes, "xnes": xnes, "openai_es": openai_es, "bernoulli": bernoulli,
              "categorical": categorical}
NAN_POLICIES = ("penalize", "raise")


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


def _strategy(strategy: str | Strategy) -> Strategy:
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {sorted(STRATEGIES)}")
        return STRATEGIES[strategy]()
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a name of scorefn.es.STRATEGIES ({sorted(STRATEGIES)}) "
                        f"or a scorefn.es.Strategy; got {type(strategy).__name__}")
    return strategy


def minimize(
    f: Callable,
    x0: Any,
    strategy: Any = "xnes",
    *,
    restarts: int = 0,
    popsize_factor: float = 2.0,
    bounds: tuple[Any, Any] | None = None,
    bound_penalty: float = 1e3,
    sigma0: float = 1.0,
    seed: int = 0,
    key: jax.Array | None = None,
    max_evaluations: int = 100_000,
    target_f: float | None = None,
    tol_x: float = 1e-12,
    tol_f: float = 0.0,
    stagnation: int | None = None,
    nan_policy: str = "penalize",
    evaluator: str = "jax",
    workers: int | None = None,
    ray_address: str | None = None,
    evaluation_timeout: float | None = None,
    generations_per_call: int = 50,
    progress: bool = False,
    plot: str | None = None,
    checkpoint: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> OptimizeResult:
    """Minimise ``f`` with a search-gradient strategy.

    Args:
      f: maps one point (shape (d,)) to a scalar; a JAX function with ``evaluator="jax"``
        (the whole generation loop is compiled, ``generations_per_call`` generations per
        call); any Python callable with ``evaluator="python"`` (called once per candidate,
        in this process), ``"processes"`` (a local pool of ``workers`` processes; f must be
        picklable) or ``"ray"`` (Ray tasks on ``ray.init(address=ray_address)``, a local Ray
        with ``workers`` CPUs when no address is given; a task whose worker dies is retried,
        so no evaluation is lost; needs the ``ray`` extra; a local Ray starts its processes
        by fork with Python code in the child, which can deadlock once JAX's threads run,
        so call ``ray.init()`` before any JAX computation or give ``ray_address``). For ``"processes"``, f is
        checked to pickle before any worker starts (a closure, a lambda or a function typed
        into ``python -c`` is a TypeError, not a pool that never answers).
      evaluation_timeout: seconds to wait for one generation's evaluations with
        ``"processes"`` or ``"ray"``; past it the run raises TimeoutError (the checkpoint
        keeps every finished generation) and the workers are stopped. None waits as long
        as f takes.
      x0: the initial mean, shape (d,) (for ``"bernoulli"``: initial probabilities of a 1).
      strategy: ``"xnes"``, ``"snes"``, ``"openai_es"``, ``"bernoulli"`` or a strategy
        object.
      max_evaluations: stop after this many evaluations of f.
      target_f: stop when the best f is at or below it.
      tol_x: stop when the search scale falls below it.
      tol_f: stop when a generation's spread of fitness falls below it.
      stagnation: stop after this many generations without improvement.
      nan_policy: ``"penalize"`` ranks NaN/inf fitness last; ``"raise"`` stops with an error.
      generations_per_call: generations per compiled call (``evaluator="jax"``). Each call
        costs about 0.1 ms on the host (progress, stopping tests), as much as ten
        generations at d = 10; lower it when one generation is slow and you want progress
        and checkpoints more often. The result, the history, the progress bar and the
        CLI's last line share one definition: the generations up to the one that met the
        stopping criterion (as the peers' scripts count), so ``f`` is the best f of those
        generations, ``x`` the point where f was found, ``f == history[-1][1]``, and
        ``evaluations`` counts their evaluations.
      progress: a rich progress bar; plot: save a convergence PNG there.
      checkpoint: a file where the run's state (strategy state with its PRNG key, best point,
        history) is written after every compiled chunk of generations and on Ctrl-C;
        ``resume=True`` continues from it (an error when the file does not exist). A
        resumed run gives the same result as an uninterrupted one with the same seed. With
        ``restarts``, this file records the finished runs and each run checkpoints itself
        in ``<checkpoint>.run<k>``. The file holds only data (``scorefn.runs.checkpoints``).
      overwrite: a fresh run (no ``resume``) refuses a ``checkpoint`` that already exists,
        so that earlier work is never replaced silently; ``overwrite=True`` starts over in
        its place.
      bounds: ``(low, high)``, scalars or arrays of shape (d,). x0 must lie inside; f is
        evaluated at the candidate clipped into the box plus ``bound_penalty`` times the
        squared distance to it, so the search is pushed back inside; the best x returned is
        inside the box.
      restarts: IPOP-style restarts (Auger & Hansen 2005): when a run stops before the target
        and the budget (tol_x, tol_f, stagnation), start again from x0 with a fresh key and
        the population multiplied by ``popsize_factor``, up to ``restarts`` times; the
        result is the best over all runs, evaluations and history accumulated. Unless
        ``stagnation`` is given, each run also stops after pycma's ``tolstagnation``,
        100 + 100 d^1.5/λ generations without a new best.
    """
    if not (np.ndim(sigma0) == 0 and np.isfinite(sigma0) and sigma0 > 0):
        raise ValueError(f"sigma0 must be a positive finite number, got {sigma0!r}")
    if bounds is not None or restarts:
        options = dict(
            sigma0=sigma0, seed=seed, key=key, max_evaluations=max_evaluations,
            target_f=target_f, tol_x=tol_x, tol_f=tol_f, stagnation=stagnation,
            nan_policy=nan_policy, evaluator=evaluator, workers=workers,
            ray_address=ray_address, evaluation_timeout=evaluation_timeout,
            generations_per_call=generations_per_call, progress=progress, plot=plot,
            checkpoint=checkpoint, resume=resume, overwrite=overwrite)
        if bounds is not None:
            f, box = penalized(f, x0, bounds, bound_penalty, evaluator)
            result = minimize(f, x0, strategy, restarts=restarts,
                              popsize_factor=popsize_factor, **options)
            result.x = np.clip(result.x, *box)
            return result
        return _minimize_with_restarts(f, x0, strategy, restarts=restarts,
                                       popsize_factor=popsize_factor, **options)
    strat = _strategy(strategy)
    x0 = jnp.asarray(x0, jnp.result_type(float))
    if x0.ndim != 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a 1-D array of length d >= 1, got shape {x0.shape}")
    if not jnp.all(jnp.isfinite(x0)):
        raise ValueError("x0 must be finite")
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")
    if key is None:
        key = jax.random.key(seed)
    validation.check_key(key)
    d = x0.shape[0]
    # First, so that the compilation cache is on before anything compiles.
    run = Run("scorefn.es", CHECKPOINT_VERSION, checkpoint=checkpoint, resume=resume,
              settings=None if checkpoint is None else _run_settings(
                  f, x0, key, sigma0, nan_policy, evaluator),
              may_change="max_evaluations and the stopping criteria", progress=progress,
              description=strat.name, total=max_evaluations, unit="evals", field="best f",
              overwrite=overwrite)
    state = _compiled_init(strat)(key, x0, float(sigma0))
    popsize = strat.population_size(state)

    if evaluator == "jax":
        run_chunk = compiled_generations(strat, f, generations_per_call, nan_policy)
    else:
        ask, tell = _compiled_ask_tell(strat)
        if workers is not None:
            validation.check_int(workers, "workers")
        if evaluation_timeout is not None and not (
                np.ndim(evaluation_timeout) == 0 and evaluation_timeout > 0):
            raise ValueError(
                f"evaluation_timeout must be a positive number of seconds or None, "
                f"got {evaluation_timeout!r}")

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
    batch_evaluator = None if evaluator == "jax" else _BatchEvaluator(
        evaluator, f, workers, ray_address, evaluation_timeout)
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


RESTARTS_CHECKPOINT_VERSION = 2  # 2: the settings
CHECKPOINT_VERSION = 4  # 2: xNES state carries its (adapted) η_σ; 3: the strategy's options; 4: the settings
STALLS = ("tol_x", "tol_f", "stagnation")  # stop reasons after which a restart follows


def _minimize_with_restarts(f, x0, strategy, *, restarts, popsize_factor, key, seed, plot,
                            checkpoint, resume, max_evaluations, **options):
    """IPOP restarts. With ``checkpoint``, the finished runs are recorded in that file and
    the current run checkpoints itself in ``<checkpoint>.run<k>``; ``resume=True`` replays
    the finished runs from the record and continues the current one exactly."""
    if restarts < 0 or popsize_factor < 1:
        raise ValueError(f"restarts must be >= 0 and popsize_factor >= 1, got {restarts}, "
                         f"{popsize_factor}")
    strat = _strategy(strategy)
    key = jax.random.key(seed) if key is None else key
    sigma0 = options["sigma0"]  # static: init may take its log in Python
    base = strat.population_size(jax.eval_shape(lambda k, x: strat.init(k, x, sigma0), key,
                                                jnp.asarray(x0, jnp.result_type(float))))
    finished: list[dict] = []  # one entry per run that ended in a stall (a restart followed)
    settings = None
    if checkpoint is not None:
        settings = {**_run_settings(f, x0, key, sigma0, options["nan_policy"],
                                    options["evaluator"]),
                    "strategy": describe(strat), "restarts": restarts,
                    "popsize_factor": float(popsize_factor)}
    # The record of finished runs, written (empty) before the first run starts, so that it
    # is what a resume finds; each run has its own checkpoint and progress bar.
    record = Run("scorefn.es restarts", RESTARTS_CHECKPOINT_VERSION, checkpoint=checkpoint,
                 resume=resume, settings=settings,
                 may_change="max_evaluations and the stopping criteria",
                 overwrite=options["overwrite"])
    if record.restored is not None:
        finished = record.restored["runs"]
    else:
        record.save(runs=finished)
    best, history, used, started = None, [], 0, time.perf_counter()
    for run in range(restarts + 1):
        if run < len(finished):  # replay a finished run from the record
            result = OptimizeResult(**finished[run])
        else:
            popsize = int(round(base * popsize_factor**run))
            run_checkpoint = None if checkpoint is None else f"{checkpoint}.run{run}"
            run_options = dict(options)
            if run_options.get("stagnation") is None:
                # pycma's tolstagnation: a run circling a local minimum at the resolution of
                # the float type (its ranks are noise) reaches neither tol_x nor tol_f.
                run_options["stagnation"] = int(100 + 100 * len(x0) ** 1.5 / popsize)
            result = minimize(f, x0, strat.with_popsize(popsize),
                              key=jax.random.fold_in(key, run),
                              max_evaluations=max_evaluations - used, checkpoint=run_checkpoint,
                              resume=resume and run_checkpoint is not None
                              and os.path.exists(run_checkpoint), **run_options)
            if checkpoint is not None and result.stop_reason in STALLS:
                finished.append(dataclasses.asdict(result))
                record.save(runs=finished)
        history += [(used + e, min(b, best.f) if best else b) for e, b in result.history]
        used += result.evaluations
        if best is None or result.f < best.f:
            best = result
        stop_reason = result.stop_reason
        if stop_reason not in STALLS or used >= max_evaluations:
            break
    final = OptimizeResult(
        x=best.x, f=best.f, evaluations=used, generations=len(history),
        stop_reason=f"{stop_reason} (after {run} restart{'s' if run != 1 else ''})",
        wall_s=time.perf_counter() - started, history=history, success=best.success)
    if plot:
        plot_convergence(final, plot, title=f"{strat.name} with restarts")
    return final


class _BatchEvaluator:
    """Evaluate f at every row, in order, here, in a process pool or on Ray; a batch that
    takes longer than ``timeout`` seconds raises TimeoutError, and the workers are stopped
    on every way out (a finished run, an error, a timeout, Ctrl-C)."""

    def __init__(self, kind, f, workers, ray_address, timeout):
        self.kind, self.f, self.timeout, self.close_fn = kind, f, timeout, lambda: None
        if kind == "processes":
            import concurrent.futures
            import multiprocessing

            _check_sendable(f)
            # spawn, not fork: the parent holds JAX's threads, which fork would copy broken.
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            self.close_fn = self._stop_pool
        elif kind == "ray":
            try:
                import ray
            except ImportError as error:
                raise ImportError("evaluator='ray' needs Ray: pip install 'scorefn[ray]'") from error
            if not ray.is_initialized():
                if ray_address is not None:
                    ray.init(address=ray_address)
                else:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self.ray = ray
            # A system failure (a worker process that dies) resubmits the task.
            self.remote = ray.remote(max_retries=5, retry_exceptions=False)(_call)
            self.pending = []
            self.close_fn = self._cancel_ray_tasks

    def __call__(self, rows):
        if self.kind == "python":
            return [self.f(row) for row in rows]
        if self.kind == "processes":
            import concurrent.futures

            futures = [self.pool.submit(_call, self.f, row) for row in rows]
            done, waiting = concurrent.futures.wait(futures, timeout=self.timeout)
            if waiting:
                raise TimeoutError(self._timeout_message(len(waiting), len(rows)))
            return [future.result() for future in futures]
        self.pending = [self.remote.remote(self.f, row) for row in rows]
        try:
            values = self.ray.get(self.pending, timeout=self.timeout)
        except self.ray.exceptions.GetTimeoutError:
            waiting = len(self.ray.wait(self.pending, num_returns=len(rows), timeout=0)[1])
            raise TimeoutError(self._timeout_message(waiting, len(rows))) from None
        self.pending = []
        return values

    def _timeout_message(self, waiting, total):
        return (f"evaluation_timeout: {waiting} of this generation's {total} evaluations of f "
                f"did not finish within {self.timeout} s on evaluator={self.kind!r}; the workers "
                "were stopped (raise evaluation_timeout if f is that slow)")

    def _stop_pool(self):
        # An evaluation still running (a timeout, Ctrl-C, a hung f) would keep its worker
        # alive after we return: stop them. Python 3.14 has a public method for this; before
        # it, the pool's processes are read before shutdown forgets them.
        terminate = getattr(self.pool, "terminate_workers", None)
        if terminate is not None:
            terminate()
            return
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)

    def _cancel_ray_tasks(self):
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        self.pending = []

    def close(self):
        self.close_fn()


def _check_sendable(f) -> None:
    """A process pool sends f by pickle, by reference to its module: fail here, with the
    reason, instead of workers that never start (a spawned worker cannot import a function
    typed into an interactive session or ``python -c``)."""
    import pickle
    import sys

    try:
        pickle.dumps(f)
    except Exception as error:
        raise TypeError(
            "evaluator='processes' sends f to its workers by pickle, and f cannot be pickled "
            f"({type(error).__name__}: {error}); define f with def at the top level of a "
            "module, or use evaluator='ray' (which pickles closures and lambdas)") from error
    module = getattr(f, "__module__", None)
    if module == "__main__" and not getattr(sys.modules.get("__main__"), "__file__", None):
        raise TypeError(
            "evaluator='processes' cannot run an f defined in an interactive session or "
            "`python -c` (its workers cannot import it); define f in a file, or use "
            "evaluator='ray'")


def _call(f, row):
    return float(f(row))


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


def _run_settings(f, x0, key, sigma0, nan_policy, evaluator) -> dict:
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
def compiled_generations(strat, f, generations: int, nan_policy: str):
    """One jitted function running ``generations`` generations (ask, vmap(f), tell, track the
    best); cached so that repeated runs on the same problem compile once."""

    def generation(carry, _):
        state, best_x, best_f = carry
        x, state = strat.ask(state)
        fitness = _checked(jax.vmap(f)(x), x)
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
