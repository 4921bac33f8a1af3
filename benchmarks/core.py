"""Core benchmark: score-function estimates per second, scorefn against two peers, same run.

For a diagonal Gaussian N(μ, diag σ²) in d dimensions, f(x) = Σ x², N samples, and the
leave-one-out baseline, one estimate of ∇(μ, log σ) E[f] is timed three ways:

  scorefn  jax.jit(lambda key: scorefn.grad(f, dist_fn, params, key, N, baseline=loo))
  checks off  the same with runtime_checks=False: what the run-time finiteness check
           (one lax.cond) costs, on a CPU and on a GPU
  jax      a hand-written jitted surrogate (the same maths, no library)
  torch    a torch.distributions REINFORCE step (sample, log_prob, backward), CPU

Each time is the median over rounds of the mean over a batch of calls, after compilation and
warm-up; the rounds interleave the three so that load on this shared machine hits all alike.
Then the variance of each baseline on a Gaussian and a Bernoulli problem.

    python benchmarks/core.py                 # the full grid (about 10 minutes)
    python benchmarks/core.py --quick         # d, N in {10, 100} only
    # some cells only, no variances: e.g. one commit against another, each from its checkout
    PYTHONPATH=../old/src python benchmarks/core.py --no-torch --timings-only \
        --sizes 100:1000,100:10000,1000:1000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from rich.console import Console

import scorefn


def dist_fn(p):
    return dist.Normal(p["loc"], jnp.exp(p["log_scale"]))


def f(x):
    return jnp.sum(x**2, -1)


def make_params(d):
    return {"loc": jnp.ones(d), "log_scale": jnp.full(d, jnp.log(0.5))}


def scorefn_estimator(params, n, checks: bool = True):
    baseline = scorefn.baselines.leave_one_out()
    return jax.jit(lambda key: scorefn.grad(f, dist_fn, params, key, n, baseline=baseline,
                                            runtime_checks=checks))


def hand_written_estimator(params, n):
    d = params["loc"].shape[0]

    @jax.jit
    def estimate(key):
        eps = jax.random.normal(key, (n, d))
        x = params["loc"] + jnp.exp(params["log_scale"]) * eps
        values = jnp.sum(x**2, -1)
        advantage = values - (values.sum() - values) / (n - 1)

        def surrogate(p):
            scale = jnp.exp(p["log_scale"])
            log_prob = -0.5 * ((x - p["loc"]) / scale) ** 2 - p["log_scale"] - 0.5 * jnp.log(2 * jnp.pi)
            return jnp.mean(advantage * log_prob.sum(-1))

        return jax.grad(surrogate)(params)

    return estimate


def torch_estimator(d, n):
    import torch

    loc = torch.ones(d, requires_grad=True)
    log_scale = torch.full((d,), float(np.log(0.5)), requires_grad=True)

    def estimate(_key):
        with torch.no_grad():
            x = torch.distributions.Normal(loc, log_scale.exp()).sample((n,))
            values = (x**2).sum(-1)
            advantage = values - (values.sum() - values) / (n - 1)
        log_prob = torch.distributions.Normal(loc, log_scale.exp()).log_prob(x).sum(-1)
        loc.grad = log_scale.grad = None
        (advantage * log_prob).mean().backward()
        return loc.grad, log_scale.grad

    return estimate


def seconds_per_call(fn, keys, block) -> float:
    start = time.perf_counter()
    out = None
    for k in keys:
        out = fn(k)
    block(out)
    return (time.perf_counter() - start) / len(keys)


def time_grid(cells, rounds, console, include_torch=True):
    rows = []
    for d, n in cells:
        params = make_params(d)
        calls = max(3, min(200, int(2e6 // (n * d))))
        keys = list(jax.random.split(jax.random.key(0), calls))
        runners = {
            "scorefn": (scorefn_estimator(params, n), jax.block_until_ready),
            "checks_off": (scorefn_estimator(params, n, checks=False), jax.block_until_ready),
            "jax": (hand_written_estimator(params, n), jax.block_until_ready),
        }
        if include_torch:
            runners["torch"] = (torch_estimator(d, n), lambda out: out)
        for fn, block in runners.values():  # compile and warm up
            block(fn(keys[0]))
            seconds_per_call(fn, keys[:3], block)
        samples = {name: [] for name in runners}
        names = list(runners)
        for r in range(rounds):
            # Rotate the order: whoever runs right after torch's threads pays for it.
            for name in names[r % len(names):] + names[: r % len(names)]:
                fn, block = runners[name]
                samples[name].append(seconds_per_call(fn, keys, block))
        med = {name: statistics.median(t) for name, t in samples.items()}
        row = {"d": d, "N": n, **{f"{k}_us": v * 1e6 for k, v in med.items()},
               "scorefn_over_jax": med["scorefn"] / med["jax"],
               "checks_off_over_jax": med["checks_off"] / med["jax"]}
        if include_torch:
            row["torch_over_scorefn"] = med["torch"] / med["scorefn"]
        rows.append(row)
        console.print(
            f"d={d:5d} N={n:6d}  scorefn {row['scorefn_us']:9.1f} µs  checks off "
            f"{row['checks_off_us']:9.1f} µs  jax {row['jax_us']:9.1f} µs"
            + (f"  torch {row['torch_us']:9.1f} µs" if include_torch else "")
            + f"  scorefn/jax {row['scorefn_over_jax']:.2f}"
            + f"  checks off/jax {row['checks_off_over_jax']:.2f}"
            + (f"  torch/scorefn {row['torch_over_scorefn']:.1f}" if include_torch else "")
        )
    return rows


def timing_markdown(rows, include_torch=True) -> str:
    head = "| d | N | scorefn µs | checks off µs | hand JAX µs |"
    sep = "|---|---|---|---|---|"
    if include_torch:
        head += " torch µs |"
        sep += "---|"
    head += " scorefn ÷ hand JAX | checks off ÷ hand JAX |"
    sep += "---|---|"
    if include_torch:
        head += " torch ÷ scorefn |"
        sep += "---|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['d']} | {r['N']} | {r['scorefn_us']:.1f} | {r['checks_off_us']:.1f} | "
                f"{r['jax_us']:.1f} |")
        if include_torch:
            line += f" {r['torch_us']:.1f} |"
        line += f" {r['scorefn_over_jax']:.2f} | {r['checks_off_over_jax']:.2f} |"
        if include_torch:
            line += f" {r['torch_over_scorefn']:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def variance_tables(num_samples, num_repeats, console) -> str:
    out = []
    d = 10
    gaussian = make_params(d)
    gaussian_truth = {"loc": 2 * gaussian["loc"], "log_scale": 2 * jnp.exp(gaussian["log_scale"]) ** 2}
    logits = jnp.linspace(-1.0, 1.0, d)
    p = jax.nn.sigmoid(logits)
    bernoulli_truth = {"logits": (0.501**2 - 0.499**2) * p * (1 - p)}

    def bern_fn(q):
        return dist.Bernoulli(logits=q["logits"])

    def bern_f(b):
        return jnp.sum((b - 0.499) ** 2)

    problems = [
        ("Gaussian, d = 10, f = Σx²", lambda x: jnp.sum(x**2), dist_fn, gaussian, gaussian_truth),
        ("Bernoulli (REBAR toy), d = 10, f = Σ(b - 0.499)²", bern_f, bern_fn, {"logits": logits},
         bernoulli_truth),
    ]
    for title, fn, dfn, params, truth in problems:
        estimators = {
            "score": {},
            "score + constant(E f)": {"baseline": float(jnp.sum(jax.vmap(fn)(
                dfn(params).sample(jax.random.key(9), (100_000,)))) / 100_000)},
            "score + ema(0.9)": {"baseline": scorefn.baselines.ema(0.9)},
            "score + leave_one_out": {"baseline": scorefn.baselines.leave_one_out()},
            "score + batch_mean": {"baseline": scorefn.baselines.batch_mean()},
            "score + optimal": {"baseline": scorefn.baselines.optimal()},
            "score + optimal(batch)": {"baseline": scorefn.baselines.optimal("batch")},
            "score + delta_method": {"control_variate": scorefn.control_variates.delta_method(fn)},
        }
        if dfn(params).has_rsample:
            estimators["pathwise"] = {"estimator": "pathwise"}
        table = scorefn.compare(fn, dfn, params, jax.random.key(1), num_samples=num_samples,
                                num_repeats=num_repeats, estimators=estimators, reference=truth,
                                print_table=False)
        table.title = f"{title}, N = {num_samples}, {num_repeats} repeats"
        table.print(console)
        out.append(f"**{table.title}**\n\n{table.to_markdown()}\n")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d, N in {10, 100}; 3 rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--sizes", help="the cells d:N to time, comma-separated (default: the "
                                        "grid of d in {10, 100, 1000}, N in {100, 1000, 10000})")
    parser.add_argument("--timings-only", action="store_true", help="no variance tables")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    dims = (10, 100) if args.quick else (10, 100, 1000)
    sizes = (100, 1000) if args.quick else (100, 1000, 10000)
    cells = [(d, n) for d in dims for n in sizes]
    if args.sizes:
        try:
            cells = [tuple(int(v) for v in cell.split(":")) for cell in args.sizes.split(",")]
        except ValueError:
            parser.error(f"--sizes takes d:N pairs, e.g. 100:1000,10:100; got {args.sizes!r}")
        if not all(len(cell) == 2 and min(cell) >= 1 for cell in cells):
            parser.error(f"--sizes takes d:N pairs of positive ints; got {args.sizes!r}")
    rounds = 3 if args.quick else args.rounds
    include_torch = not args.no_torch
    versions = f"jax {jax.__version__}, numpyro {numpyro.__version__}"
    if include_torch:
        import torch

        versions += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}")
    console.print(f"[bold]machine[/bold] {machine}; {versions}")
    rows = time_grid(cells, rounds, console, include_torch)
    timing = timing_markdown(rows, include_torch)
    console.print(timing)
    variance = "" if args.timings_only else variance_tables(100, 400 if args.quick else 1000,
                                                            console)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(f"machine: {machine}; {versions}\n\n{timing}\n\n{variance}\n")


if __name__ == "__main__":
    main()
