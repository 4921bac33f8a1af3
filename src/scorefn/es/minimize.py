"""``scorefn.es.minimize``: run a strategy until a stopping criterion, with progress and a plot.

The entry point: it checks the arguments and makes one ``RunOptions`` of them, puts f in
the box of ``bounds`` (``scorefn.es.bounds``), and runs the strategy once
(``scorefn.es.run.run_strategy``) or with IPOP restarts (``scorefn.es.restarts``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import validation
from scorefn.es.bernoulli import bernoulli
from scorefn.es.bounds import penalized
from scorefn.es.categorical import categorical
from scorefn.es.evaluators import EVALUATORS
from scorefn.es.evaluators import check_options as check_evaluator_options
from scorefn.es.openai_es import openai_es
from scorefn.es.restarts import run_with_restarts
from scorefn.es.run import (
    OptimizeResult,
    RunOptions,
    plot_convergence,
    run_strategy,
)
from scorefn.es.snes import snes
from scorefn.es.strategy import Strategy
from scorefn.es.xnes import xnes
from scorefn.runs.devices import mesh_of

STRATEGIES = {"snes": snes, "xnes": xnes, "openai_es": openai_es, "bernoulli": bernoulli,
              "categorical": categorical}
__all__ = ["EVALUATORS", "STRATEGIES", "OptimizeResult", "minimize", "plot_convergence"]


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
    devices: Any = None,
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
      devices: split each generation's population across devices (``evaluator="jax"``):
        a count, a list of devices or a ``jax.sharding.Mesh`` (``scorefn.runs.devices``);
        the strategy's update runs replicated. The same seed gives the same run as on one
        device up to float32 rounding: XLA compiles f for a shard's shape, so its values
        may differ in the last bits, and a fitness rank can flip only between values that
        close (tested: best f within 1e-5 relative, the best x within 1e-3 where f is flat).
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
    # a budget or a call size of 0 would stop at x0 (or loop forever) without a word
    validation.check_int(max_evaluations, "max_evaluations")
    validation.check_int(generations_per_call, "generations_per_call")
    if stagnation is not None:
        validation.check_int(stagnation, "stagnation")
    for name, value in (("target_f", target_f), ("tol_x", tol_x), ("tol_f", tol_f)):
        if value is not None or name != "target_f":
            validation.check_real(value, name)
    validation.check_int(restarts, "restarts", 0)
    validation.check_real(popsize_factor, "popsize_factor", 1.0)
    validation.check_real(bound_penalty, "bound_penalty", 0.0)
    strat = _strategy(strategy)
    x = jnp.asarray(x0, jnp.result_type(float))
    if x.ndim != 1 or x.shape[0] < 1:
        raise ValueError(f"x0 must be a 1-D array of length d >= 1, got shape {x.shape}")
    if not jnp.all(jnp.isfinite(x)):
        raise ValueError("x0 must be finite")
    validation.check_nan_policy(nan_policy, ("penalize", "raise"))
    if evaluator != "jax":
        check_evaluator_options(evaluator, workers, evaluation_timeout)
        if devices is not None:
            raise ValueError("devices= splits the compiled evaluations of evaluator='jax'; "
                             f"evaluator={evaluator!r} evaluates on the host (workers=)")
    mesh_of(devices)  # a bad devices= is an error now, not after the first generation
    key = jax.random.key(seed) if key is None else key
    validation.check_key(key)
    options = RunOptions(
        sigma0=sigma0, key=key, max_evaluations=max_evaluations, target_f=target_f,
        tol_x=tol_x, tol_f=tol_f, stagnation=stagnation, nan_policy=nan_policy,
        evaluator=evaluator, workers=workers, ray_address=ray_address,
        evaluation_timeout=evaluation_timeout, generations_per_call=generations_per_call,
        devices=devices, progress=progress, plot=plot, checkpoint=checkpoint, resume=resume,
        overwrite=overwrite)
    box = None
    if bounds is not None:
        f, box = penalized(f, x0, bounds, bound_penalty, evaluator)
    if restarts:
        result = run_with_restarts(f, x0, strat, options, restarts=restarts,
                                   popsize_factor=popsize_factor)
    else:
        result = run_strategy(f, x0, strat, options)
    if box is not None:
        result.x = np.clip(result.x, *box)
    return result
