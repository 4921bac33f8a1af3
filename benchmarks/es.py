"""ES benchmark: scorefn.es against pycma and evosax in one run.

Protocol of ../shared/peers/cma_bbo.py and evosax_bbo.py: x0 ~ U[-3, 3]^d from numpy
default_rng(seed); σ0 = 2 for rastrigin, 0.5 otherwise; target f < 1e-8; caps 2e5 evaluations
(d = 10) and 1e6 (d = 100); no restarts; λ = 4 + ⌊3 ln d⌋; float64 everywhere. pycma evaluates
candidates one by one in Python (its usual use); evosax and scorefn run jitted generation
loops (scan chunks of 50 generations: evosax's peer script's, and scorefn's default), and
their wall time excludes compilation, which is reported apart. Evaluations count up to the
first generation whose best f is below the target.

Then wall time per generation, medians of 3 interleaved rounds (each the median of 5 to 50
calls) after compilation: xNES at d = 10 and 100 (scorefn and evosax); at d = 1000 and 10000 SNES and
OpenAI-ES (scorefn), SNES (evosax) and CMA-ES (evosax and pycma, d = 1000 only).

    pip install ".[bench]"
    python benchmarks/es.py                     # about 10 minutes
    python benchmarks/es.py --seeds 0 --quick   # d = 10 only
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import cma  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from evosax import algorithms as A  # noqa: E402

from scorefn import es  # noqa: E402

TARGET = 1e-8
PROBLEMS = {  # name: (function, d, sigma0, cap)
    "sphere10": ("sphere", 10, 0.5, 200_000),
    "ellipsoid10": ("ellipsoid", 10, 0.5, 200_000),
    "rosenbrock10": ("rosenbrock", 10, 0.5, 200_000),
    "rastrigin10": ("rastrigin", 10, 2.0, 200_000),
    "sphere100": ("sphere", 100, 0.5, 1_000_000),
}


def numpy_function(name):
    if name == "ellipsoid":
        def ellipsoid(x):
            w = 1e6 ** (np.arange(x.size) / (x.size - 1))
            return float(np.dot(w, x * x))
        return ellipsoid
    jax_f = es.FUNCTIONS[name][0]
    fn = jax.jit(jax_f)
    return lambda x: float(fn(jnp.asarray(x)))


def run_pycma(name, seed):
    fname, d, sigma0, cap = PROBLEMS[name]
    f = {"sphere": lambda x: float(np.dot(x, x)),
         "rosenbrock": lambda x: float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)),
         "rastrigin": lambda x: float(10.0 * x.size + np.sum(x * x - 10.0 * np.cos(2 * np.pi * x))),
         }.get(fname) or numpy_function(fname)
    x0 = np.random.default_rng(seed).uniform(-3, 3, d)
    strategy = cma.CMAEvolutionStrategy(x0, sigma0, {"seed": seed + 1, "ftarget": TARGET,
                                                     "maxfevals": cap, "verbose": -9})
    start = time.perf_counter()
    while not strategy.stop():
        x = strategy.ask()
        strategy.tell(x, [f(xi) for xi in x])
    wall = time.perf_counter() - start
    best = strategy.result.fbest
    return {"evals": int(strategy.result.evaluations), "wall": wall, "compile": 0.0,
            "success": best < TARGET, "best": float(best)}


def evosax_loop(algo, f, lam, d, sigma0, generations, **params_overrides):
    """evosax's strategy and params, and one jitted chunk of ``generations`` ask/f/tell steps
    (the peer script's loop) returning the best fitness after each."""
    strategy = getattr(A, algo)(population_size=lam, solution=jnp.zeros(d))
    params = strategy.default_params.replace(std_init=jnp.asarray(sigma0), **{
        k: jnp.asarray(v) for k, v in params_overrides.items()})

    def step(state, key):
        k1, k2 = jax.random.split(key)
        pop, state = strategy.ask(k1, state, params)
        state, _ = strategy.tell(k2, pop, jax.vmap(f)(pop), state, params)
        return state, state.best_fitness

    chunk = jax.jit(lambda state, key: jax.lax.scan(step, state, jax.random.split(key, generations)))
    return strategy, params, chunk


def run_evosax(algo, name, seed, chunk=50, **params_overrides):
    fname, d, sigma0, cap = PROBLEMS[name]
    f = es.FUNCTIONS[fname][0]
    lam = 4 + int(3 * math.log(d))
    strategy, params, run_chunk = evosax_loop(algo, f, lam, d, sigma0, chunk, **params_overrides)
    init = jax.jit(lambda key, mean: strategy.init(key, mean, params))
    x0 = jnp.asarray(np.random.default_rng(seed).uniform(-3, 3, d))
    key = jax.random.key(seed + 1)
    start = time.perf_counter()
    # Twice: the chunk's output state can differ in weak types from init's, which recompiles.
    warm, _ = run_chunk(init(key, x0), key)
    jax.block_until_ready(run_chunk(warm, key))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state = init(key, x0)
    gens, hit, best = 0, None, math.inf
    while gens * lam < cap:
        key, sub = jax.random.split(key)
        state, bests = run_chunk(state, sub)
        bests = np.asarray(bests)
        idx = np.nonzero(bests < TARGET)[0]
        if idx.size:
            hit, best = gens + int(idx[0]) + 1, float(bests[idx[0]])
            break
        gens += chunk
        best = float(bests[-1])
    wall = time.perf_counter() - start
    evals = hit * lam if hit else gens * lam
    return {"evals": evals, "wall": wall, "compile": compile_s,
            "success": hit is not None and evals <= cap, "best": best}


def run_scorefn(strategy, name, seed, restarts=0, **options):
    fname, d, sigma0, cap = PROBLEMS[name]
    f = es.FUNCTIONS[fname][0]
    x0 = np.random.default_rng(seed).uniform(-3, 3, d)
    strat = es.STRATEGIES[strategy](**options)
    start = time.perf_counter()  # compile: one chunk of the same program
    es.minimize(f, x0, strat, sigma0=sigma0, seed=seed, max_evaluations=1, tol_f=-1.0)
    compile_s = time.perf_counter() - start
    if restarts:  # IPOP: restart when the search stalls (default tol_x / tol_f)
        result = es.minimize(f, x0, strat, sigma0=sigma0, seed=seed, target_f=TARGET,
                             max_evaluations=cap, restarts=restarts)
    else:
        result = es.minimize(f, x0, strat, sigma0=sigma0, seed=seed, target_f=TARGET,
                             max_evaluations=cap, tol_f=-1.0, tol_x=0.0)
    # A run may end a generation past the cap (restarts grow λ); as for the peers, that fails.
    return {"evals": result.evaluations, "wall": result.wall_s, "compile": compile_s,
            "success": result.success and result.evaluations <= cap, "best": result.f}


def seconds_per_generation(d, rounds=3, repeats=5):
    """Seconds per generation on the sphere, scorefn and peers at dimension d: SNES and
    OpenAI-ES against SNES and CMA-ES at d >= 1000, xNES against xNES below. evosax's xNES
    updates B with an elementwise exp instead of expm: not quite the same algorithm."""
    lam = 4 + int(3 * math.log(d))
    x0 = jnp.asarray(np.random.default_rng(0).uniform(-3, 3, d))
    gens = 20
    if d >= 1000:
        ours = {"scorefn SNES": es.SNES(), "scorefn SNES, mirrored": es.SNES(mirrored=True),
                # mirrored sampling needs an even population
                "scorefn OpenAI-ES": es.openai_es(popsize=lam + lam % 2)}
        peers = ["SNES", "CMA_ES"] if d <= 1000 else ["SNES"]
    else:
        ours = {"scorefn xNES": es.XNES(),
                "scorefn xNES, plain": es.XNES(adaptation_sampling=False, mirrored=False)}
        peers = ["xNES"]
    calls = {label: _scorefn_generations(strat, x0, gens) for label, strat in ours.items()}
    calls.update({f"evosax {algo}": _evosax_generations(algo, lam, x0, gens) for algo in peers})
    if d == 1000:
        strategy = cma.CMAEvolutionStrategy(np.asarray(x0), 0.5, {"seed": 1, "verbose": -9})
        f = lambda x: float(np.dot(x, x))  # noqa: E731

        def pycma_gens():
            for _ in range(gens):
                x = strategy.ask()
                strategy.tell(x, [f(xi) for xi in x])

        calls["pycma CMA-ES"] = pycma_gens
    # Rounds over every optimiser in turn, so that a change in the shared machine's load
    # affects each of them, not only the one being timed.
    times = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            times[label].append(_time(call, repeats) / gens)
    return {label: statistics.median(t) for label, t in times.items()}


def _scorefn_generations(strat, x0, gens):
    from scorefn.es.run import compiled_generations

    run = compiled_generations(strat, es.sphere, gens, "penalize")
    carry = (strat.init(jax.random.key(0), x0, 0.5), x0, jnp.asarray(jnp.inf))
    return lambda: run(carry)


def _evosax_generations(algo, lam, x0, gens):
    strategy, params, chunk = evosax_loop(algo, es.sphere, lam, x0.shape[0], 0.5, gens)
    state = strategy.init(jax.random.key(0), x0, params)
    return lambda: chunk(state, jax.random.key(1))


def _time(fn, repeats):
    """Median seconds per call. Fast calls are repeated until about 0.3 s has passed (at
    most 50 times): right after another program has run, the first few calls are slower."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(max(repeats, min(50, math.ceil(0.3 / max(first, 1e-6))))):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="d = 10 problems only, no d >= 1000")
    parser.add_argument("--only", nargs="+", default=None, help="problem names, e.g. rastrigin10")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--runners", nargs="+", default=None,
                        help="optimiser labels to run, e.g. 'scorefn OpenAI-ES' (default: all)")
    parser.add_argument("--timing", action="store_true",
                        help="with --only or --runners, still time generations")
    args = parser.parse_args()
    problems = [p for p in PROBLEMS if not (args.quick and PROBLEMS[p][1] > 10)]
    if args.only:
        problems = [p for p in problems if p in args.only]
    runners = {
        "pycma CMA-ES": run_pycma,
        "evosax CMA_ES": lambda n, s: run_evosax("CMA_ES", n, s),
        "evosax SNES": lambda n, s: run_evosax("SNES", n, s),
        "evosax xNES": lambda n, s: run_evosax("xNES", n, s),
        "evosax SNES, η_σ = 0.01": lambda n, s: run_evosax("SNES", n, s, lr_std_init=0.01),
        "scorefn SNES": lambda n, s: run_scorefn("snes", n, s),
        "scorefn SNES, mirrored": lambda n, s: run_scorefn("snes", n, s, mirrored=True),
        "scorefn SNES, mirrored, η_σ = 0.01": lambda n, s: run_scorefn(
            "snes", n, s, mirrored=True, lr_scale=0.01),
        "scorefn xNES": lambda n, s: run_scorefn("xnes", n, s),  # adaptation + mirrored sampling
        "scorefn xNES, plain": lambda n, s: run_scorefn(
            "xnes", n, s, adaptation_sampling=False, mirrored=False),
        "scorefn xNES + adaptation sampling, unmirrored": lambda n, s: run_scorefn(
            "xnes", n, s, mirrored=False),
        "scorefn OpenAI-ES": lambda n, s: run_scorefn("openai_es", n, s),
        "scorefn SNES + IPOP restarts": lambda n, s: run_scorefn("snes", n, s, restarts=8),
        "scorefn xNES + IPOP restarts": lambda n, s: run_scorefn("xnes", n, s, restarts=8),
    }
    if args.runners:
        runners = {k: v for k, v in runners.items() if k in args.runners}
    header = (f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}; jax {jax.__version__} (float64), evosax "
              f"{importlib.metadata.version('evosax')}, cma {cma.__version__}; seeds {args.seeds}")
    print(header)
    lines = [header, "", "| problem | optimiser | success | median evals (per seed) | median wall s "
             "(first compile s) | best f when failed |", "|---|---|---|---|---|---|"]
    for name in problems:
        for label, runner in runners.items():
            if PROBLEMS[name][1] > 10 and "xNES" in label:
                continue  # full-covariance NES at d = 100 needs ~1e6 evaluations: out of budget here
            if "IPOP" in label and not name.startswith("rastrigin"):
                continue  # restarts matter only where the single runs stall
            if "0.01" in label and not name.startswith("rosenbrock"):
                continue  # a slow σ rate for rosenbrock's curved valley; slow elsewhere
            results = [runner(name, seed) for seed in args.seeds]
            ok = sum(r["success"] for r in results)
            evals = [r["evals"] for r in results]
            failed = [f"{r['best']:.3g}" for r in results if not r["success"]]
            line = (f"| {name} | {label} | {ok}/{len(results)} | {int(statistics.median(evals)):,} "
                    f"({', '.join(f'{e:,}' for e in evals)}) | "
                    f"{statistics.median(r['wall'] for r in results):.3f} "
                    f"({max(r['compile'] for r in results):.1f}) | "
                    f"{', '.join(failed)} |")
            print(line, flush=True)
            lines.append(line)
    if not args.quick and ((not args.only and not args.runners) or args.timing):
        lines += ["", "| d | optimiser | ms per generation |", "|---|---|---|"]
        for d in (10, 100, 1000, 10000):
            for label, seconds in seconds_per_generation(d).items():
                line = f"| {d} | {label} | {seconds * 1e3:.3f} |"
                print(line, flush=True)
                lines.append(line)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
