"""IPOP restarts (Auger & Hansen 2005) around ``scorefn.es.run.run_strategy``: each run that stalls is
followed by another from x0 with a fresh key and a larger population."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from scorefn.es.run import (
    OptimizeResult,
    RunOptions,
    plot_convergence,
    run_settings,
    run_strategy,
)
from scorefn.es.strategy import Strategy
from scorefn.runs import Run, describe

RESTARTS_CHECKPOINT_VERSION = 2  # 2: the settings
STALLS = ("tol_x", "tol_f", "stagnation")  # stop reasons after which a restart follows


def run_with_restarts(f: Callable, x0: Any, strat: Strategy, options: RunOptions, *,
                      restarts: int, popsize_factor: float) -> OptimizeResult:
    """IPOP restarts. With ``checkpoint``, the finished runs are recorded in that file and
    the current run checkpoints itself in ``<checkpoint>.run<k>``; ``resume=True`` replays
    the finished runs from the record and continues the current one exactly."""
    key, sigma0, checkpoint = options.key, options.sigma0, options.checkpoint
    base = strat.population_size(jax.eval_shape(lambda k, x: strat.init(k, x, sigma0), key,
                                                jnp.asarray(x0, jnp.result_type(float))))
    finished: list[dict] = []  # one entry per run that ended in a stall (a restart followed)
    settings = None
    if checkpoint is not None:
        settings = {**run_settings(f, x0, key, sigma0, options.nan_policy, options.evaluator),
                    "strategy": describe(strat), "restarts": restarts,
                    "popsize_factor": float(popsize_factor)}
    # The record of finished runs, written (empty) before the first run starts, so that it
    # is what a resume finds; each run has its own checkpoint and progress bar.
    record = Run("scorefn.es restarts", RESTARTS_CHECKPOINT_VERSION, checkpoint=checkpoint,
                 resume=options.resume, settings=settings,
                 may_change="max_evaluations and the stopping criteria",
                 overwrite=options.overwrite)
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
            # pycma's tolstagnation, unless given: a run circling a local minimum at the
            # resolution of the float type (its ranks are noise) reaches neither tol_x nor tol_f.
            stagnation = options.stagnation
            if stagnation is None:
                stagnation = int(100 + 100 * len(x0) ** 1.5 / popsize)
            result = run_strategy(f, x0, strat.with_popsize(popsize), dataclasses.replace(
                options, key=jax.random.fold_in(key, run), stagnation=stagnation,
                max_evaluations=options.max_evaluations - used, checkpoint=run_checkpoint,
                resume=options.resume and run_checkpoint is not None
                and os.path.exists(run_checkpoint), plot=None))
            if checkpoint is not None and result.stop_reason in STALLS:
                finished.append(dataclasses.asdict(result))
                record.save(runs=finished)
        history += [(used + e, min(b, best.f) if best else b) for e, b in result.history]
        used += result.evaluations
        if best is None or result.f < best.f:
            best = result
        stop_reason = result.stop_reason
        if stop_reason not in STALLS or used >= options.max_evaluations:
            break
    final = OptimizeResult(
        x=best.x, f=best.f, evaluations=used, generations=len(history),
        stop_reason=f"{stop_reason} (after {run} restart{'s' if run != 1 else ''})",
        wall_s=time.perf_counter() - started, history=history, success=best.success)
    if options.plot:
        plot_convergence(final, options.plot, title=f"{strat.name} with restarts")
    return final
