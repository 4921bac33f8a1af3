"""Scaling benchmark: throughput against processes and devices, and gymnasium's vector modes.

Each part runs as its own subprocess in three layouts: one process with one device, one
process with N simulated devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``),
and N processes under ``jax.distributed`` (``python -m scorefn.runs.processes N``, CPU
collectives over gloo) whose devices the run splits across:

- ``es``: ES function evaluations per second (SNES, λ = 512, Rastrigin in d = 2,000);
- ``rl``: PPO environment steps per second (gymnax CartPole, 8 seeds at once);
- ``vi``: ELBO steps per second (a logistic regression on 8,192 × 32 generated data);
- ``programs``: gradient estimates per second (``programs.grad``, 4,096 particles).

Then the host side: ``es_host``, ES evaluations per second of a Python objective (about 8 ms
of pure Python each here) with ``evaluator="python"`` (in the run's process), ``"processes"`` and
``"ray"`` (2 workers each); ``gym``: PPO on gymnasium's HalfCheetah-v5 with 4
environments, the sync vector env against the async one and 2 Ray actors
(``vectorization_mode``), environment steps per second.

A rate is a steady-state one (compilation left out), the median of ``--repeats`` runs;
the efficiency is the rate over N times the one-device rate. On a CPU the "devices" share
the machine's cores, and one process already runs XLA's intra-op threads on all of them, so
this shows what splitting costs or gains on this machine; on a machine with several
accelerators the same script measures the real thing (``benchmarks/gpu.py`` calls it).

    python benchmarks/scale.py                        # N = 2, about 10 minutes on 2 cores
    python benchmarks/scale.py --n 8 --parts es,rl    # e.g. on 8 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
def main():
    import json, sys, time
    from scorefn.runs import processes
    processes.initialize_from_environment()
    import jax, jax.numpy as jnp, numpy as np
    part, devices = sys.argv[1], jax.device_count()
    split = devices if devices > 1 else None

    if part == "es":
        from scorefn import es
        def rastrigin(x):
            return 10 * x.size + jnp.sum(x ** 2 - 10 * jnp.cos(2 * jnp.pi * x))
        x0 = np.full(2000, 1.0, np.float32)
        options = dict(sigma0=0.5, seed=0, generations_per_call=10, progress=False, devices=split)
        es.minimize(rastrigin, x0, es.snes(popsize=512), max_evaluations=512 * 10, **options)
        started = time.perf_counter()
        result = es.minimize(rastrigin, x0, es.snes(popsize=512), max_evaluations=512 * 60, **options)
        rate, unit = result.evaluations / (time.perf_counter() - started), "evaluations/s"
    elif part == "rl":
        from scorefn import rl
        result = rl.train("CartPole-v1", "ppo", seeds=list(range(8)), total_steps=32768,
                          eval_every=4096, progress=False, devices=split)
        first, last = result.history[0], result.history[-1]
        rate = 8 * (last["env_steps"] - first["env_steps"]) / (last["wall_s"] - first["wall_s"])
        unit = "env steps/s"
    elif part == "vi":
        import numpyro, numpyro.distributions as dist
        from scorefn import vi
        X = jax.random.normal(jax.random.key(0), (8192, 32))
        y = (X @ jnp.linspace(-1, 1, 32) > 0).astype(jnp.float32)
        def logistic(X, y):
            w = numpyro.sample("w", dist.Normal(jnp.zeros(32), 1.0).to_event(1))
            with numpyro.plate("data", X.shape[0]):
                numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)
        result = vi.fit(logistic, None, (X, y), jax.random.key(0), estimator="pathwise",
                        num_samples=8, steps=1100, progress=False, devices=split)
        rate, unit = result.steps_per_s, "steps/s"  # the chunks after the first, which compiles
    elif part == "programs":
        import numpyro, numpyro.distributions as dist
        import scorefn
        def program(p, x):
            z = numpyro.sample("z", dist.Bernoulli(logits=p["a"] * jnp.ones(16)).to_event(1))
            y = numpyro.sample("y", dist.Normal(p["m"] + jnp.sum(z), 1.0))
            numpyro.factor("f", -(y - x) ** 2 + jnp.cos(3 * y))
        params = {"a": jnp.array(0.3), "m": jnp.array(0.1)}
        grad = jax.jit(lambda p, k: scorefn.programs.grad(program, p, k, 1.0, num_particles=4096,
                                                          devices=split, runtime_checks=False))
        jax.block_until_ready(grad(params, jax.random.key(0)))
        started = time.perf_counter()
        for i in range(20):
            out = grad(params, jax.random.key(i))
        jax.block_until_ready(out)
        rate, unit = 20 / (time.perf_counter() - started), "gradients/s"
    elif part == "es_host":
        from scorefn import es
        from scale_objective import simulator  # importable: the process pool sends it by name
        evaluator = sys.argv[2]
        def wall(evaluations):
            started = time.perf_counter()
            es.minimize(simulator, np.full(10, 1.0), es.snes(popsize=16), max_evaluations=evaluations,
                        seed=0, evaluator=evaluator, workers=2, progress=False)
            return time.perf_counter() - started
        wall(16)  # Ray starts once per process, at its first run
        short, long = wall(160), wall(800)  # the difference leaves out starting the workers
        rate, unit = 640 / (long - short), "evaluations/s"
    elif part == "gym":
        from scorefn import rl
        mode = sys.argv[2]
        result = rl.train("HalfCheetah-v5", "ppo", 0, 3 * 8192, backend="gymnasium",
                          vectorization_mode=mode, num_envs=4, eval_every=8192, eval_episodes=1,
                          workers=2 if mode == "ray" else None, progress=False)
        first, last = result.history[0], result.history[-1]
        rate = (last["env_steps"] - first["env_steps"]) / (last["wall_s"] - first["wall_s"])
        unit = "env steps/s"
    if processes.is_main():
        print(json.dumps({"part": part, "rate": rate, "unit": unit, "devices": devices,
                          "processes": jax.process_count()}))


if __name__ == "__main__":  # a spawned process pool imports this file again
    main()
'''


OBJECTIVE = r'''
def simulator(x):
    """A host-side objective: milliseconds of pure Python (it holds the GIL)."""
    total = 0.0
    for step in range(3000):
        for xi in x:
            total += (float(xi) - 0.5) ** 2 * 1e-3
    return total
'''


def measure(command: list[str], env: dict, timeout: float) -> dict:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2, help="devices and processes to compare")
    parser.add_argument("--parts", default="es,rl,vi,programs,es_host,gym")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "scale.json"))
    args = parser.parse_args()
    worker = os.path.join(ROOT, "benchmarks", "results", "scale_worker.py")
    os.makedirs(os.path.dirname(worker), exist_ok=True)
    with open(worker, "w") as fh:
        fh.write(WORKER)
    with open(os.path.join(os.path.dirname(worker), "scale_objective.py"), "w") as fh:
        fh.write(OBJECTIVE)
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    layouts = {
        "1 process, 1 device": ([sys.executable, worker], base),
        f"1 process, {args.n} devices": ([sys.executable, worker], dict(
            base, XLA_FLAGS=f"--xla_force_host_platform_device_count={args.n}")),
        f"{args.n} processes": ([sys.executable, "-m", "scorefn.runs.processes", str(args.n),
                                 worker], base),
    }
    rows = []
    for part in args.parts.split(","):
        if part == "gym":
            variants = {f"gymnasium {m}": ([sys.executable, worker], base, [m])
                        for m in ("sync", "async", "ray")}
        elif part == "es_host":
            variants = {f"evaluator {e}": ([sys.executable, worker], base, [e])
                        for e in ("python", "processes", "ray")}
        else:
            variants = {name: (cmd, env, []) for name, (cmd, env) in layouts.items()}
        reference = None
        for name, (command, env, extra) in variants.items():
            rates = []
            for _ in range(args.repeats):
                out = measure(command + [part] + extra, env, args.timeout)
                rates.append(out["rate"])
            rate = statistics.median(rates)
            reference = reference or rate
            width = {"gym": 1, "es_host": 1 if name.endswith("python") else 2}.get(
                part, out["devices"])
            row = {"part": part, "layout": name, "rate": rate, "unit": out["unit"],
                   "rates": rates, "speedup": rate / reference,
                   "efficiency": rate / reference / width}
            rows.append(row)
            print(f"{part:9s} {name:24s} {rate:12,.1f} {out['unit']:13s} "
                  f"x{row['speedup']:.2f} (efficiency {row['efficiency']:.2f})", flush=True)
    import jax

    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "jax": jax.__version__, "n": args.n, "rows": rows}
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
