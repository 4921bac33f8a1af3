"""Fisher benchmark: matrix-free natural gradients against forming the dense Fisher.

A Categorical policy over 4 actions with an MLP 8 → 96 → 96 → 4 (10,564 parameters),
evaluated at 256 states; N = 64 sampled action vectors. In one run:

  fvp          one Fisher-vector product Î v (a JVP and a VJP of the log-probabilities)
  kl_fvp       one Hessian-vector product of the mean KL (TRPO's Fisher-vector product)
  cg_solve     natural gradient by conjugate gradient (80 iterations: the sampled Fisher has
               rank ≤ 64, so CG converges by then) on the Fisher-vector product
  dense_fisher forming Î = (1/N) Σ g gᵀ, a 10,564 × 10,564 matrix
  dense_solve  the damped Cholesky solve with that matrix

Times are medians of repeats after compilation; memory is XLA's own account of each
compiled function (arguments + outputs + temporaries). Then the relative difference
between the CG and the dense solution.

    python benchmarks/fisher.py            # about 3 minutes
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from rich.console import Console

import scorefn
from scorefn import fisher

OBS, HIDDEN, ACTIONS, STATES = 8, 96, 4, 256


def init_mlp(key):
    sizes = [OBS, HIDDEN, HIDDEN, ACTIONS]
    params = []
    for k, (m, n) in zip(jax.random.split(key, 3), zip(sizes[:-1], sizes[1:])):
        params.append({"w": jax.random.normal(k, (m, n)) / jnp.sqrt(m), "b": jnp.zeros(n)})
    return params


def logits_of(params, states):
    h = states
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["w"] + layer["b"])
    return h @ params[-1]["w"] + params[-1]["b"]


def timed(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory_bytes(fn, *args):
    analysis = fn.lower(*args).compile().memory_analysis()
    if analysis is None:
        return float("nan")
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cg-iterations", type=int, default=80)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 110))
    key = jax.random.key(0)
    k_params, k_states, k_actions, k_vec = jax.random.split(key, 4)
    params = init_mlp(k_params)
    states = jax.random.normal(k_states, (STATES, OBS))
    num_params = ravel_pytree(params)[0].size

    def dist_fn(p):
        return dist.Categorical(logits=logits_of(p, states))

    samples = scorefn.sample(dist_fn, params, k_actions, args.samples)
    grad = jax.tree.map(lambda x: jax.random.normal(k_vec, x.shape), params)
    damping = 1e-3

    @jax.jit
    def fvp(p, v):
        return fisher.fisher_vector_product(dist_fn, p, samples)(v)

    @jax.jit
    def kl_fvp(p, v):
        return fisher.kl_fisher_vector_product(dist_fn, p)(v)

    @jax.jit
    def cg_solve(p, g):
        return fisher.natural_gradient_cg(fisher.fisher_vector_product(dist_fn, p, samples), g,
                                          damping=damping, maxiter=args.cg_iterations, tol=0.0)

    @jax.jit
    def dense_fisher(p):
        return fisher.empirical_fisher(dist_fn, p, samples)

    @jax.jit
    def dense_solve(f, g):
        return fisher.natural_gradient_dense(f, g, damping=damping)

    rows = []
    with numpyro.validation_enabled(False):
        matrix = dense_fisher(params)
        for name, fn, fargs in [
            ("fvp", fvp, (params, grad)),
            ("kl_fvp", kl_fvp, (params, grad)),
            (f"cg_solve ({args.cg_iterations} iterations)", cg_solve, (params, grad)),
            ("dense_fisher", dense_fisher, (params,)),
            ("dense_solve (Cholesky)", dense_solve, (matrix, grad)),
        ]:
            seconds = timed(fn, *fargs, repeats=args.repeats)
            mem = memory_bytes(fn, *fargs)
            rows.append((name, seconds, mem))
            console.print(f"{name:26s} {seconds * 1e3:10.2f} ms   {mem / 2**20:10.1f} MiB")
        dense_total = rows[3][1] + rows[4][1]
        cg = ravel_pytree(cg_solve(params, grad))[0]
        exact = ravel_pytree(dense_solve(matrix, grad))[0]
        rel = float(jnp.linalg.norm(cg - exact) / jnp.linalg.norm(exact))
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
               f"jax {jax.__version__}")
    lines = [
        f"machine: {machine}; policy MLP with {num_params:,} parameters, {STATES} states, "
        f"N = {args.samples} sampled action vectors, damping {damping}",
        "",
        "| operation | median ms | XLA memory MiB |",
        "|---|---|---|",
        *[f"| {n} | {s * 1e3:.2f} | {m / 2**20:.1f} |" for n, s, m in rows],
        "",
        f"- dense (form + solve) ÷ CG natural gradient: time {dense_total / rows[2][1]:.0f}×, "
        f"memory {max(rows[3][2], rows[4][2]) / rows[2][2]:.0f}×",
        f"- ‖CG − dense‖ / ‖dense‖ after {args.cg_iterations} iterations: {rel:.2e}",
    ]
    text = "\n".join(lines)
    console.print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
