"""One script for a machine with an accelerator: the test suite, the core benchmark,
many-seed PPO, ES generations up to d = 1e6, scorefn's PPO against brax's own on brax's tasks
(benchmarks/brax_ppo.py; it needs brax, ``pip install "scorefn[brax]"``) and, with several
accelerators, the sharded runs of benchmarks/scale.py, written to one markdown file.

Sized to a few minutes a part on one GPU (the brax part: Ant, both sides with brax's
default networks, up to 8 minutes, its sides' time limits, so run it alone; InvertedPendulum's
1,000-step evaluations are slow on a GPU, and its time to 950 is measured on a CPU);
``--quick`` shrinks every part so that it also runs on a CPU (that is how it is tested). Each
part runs in a subprocess with a time limit, and a part that fails or times out is reported
as such, not hidden; the other parts still run.

    python benchmarks/gpu.py --out gpu_results.md            # on the GPU machine
    python benchmarks/gpu.py --quick --out /tmp/gpu_quick.md   # anywhere
    python benchmarks/gpu.py --parts brax,ppo                  # some parts only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ("tests", "core", "ppo", "es", "brax", "scale")
ROOT = os.path.dirname(HERE)


def run(command: list[str], timeout: float) -> tuple[str, str, float]:
    """(status, last lines of output, seconds) of a subprocess."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        text = (done.stdout + done.stderr).strip()
    except subprocess.TimeoutExpired as error:
        status = f"timed out after {timeout:.0f} s"
        text = ((error.stdout or b"").decode(errors="replace")
                + (error.stderr or b"").decode(errors="replace")).strip()
    return status, "\n".join(text.splitlines()[-40:]), time.perf_counter() - started


PPO_SEEDS = """
import json, time, jax
from scorefn import rl
seeds = list(range({seeds}))
rl.train("CartPole-v1", "ppo", seeds=seeds[:2], total_steps=2048, progress=False)  # compile
started = time.perf_counter()
result = rl.train("CartPole-v1", "ppo", seeds=seeds, total_steps={steps}, progress=False)
wall = time.perf_counter() - started
print(json.dumps({{"seeds": len(seeds), "env_steps_per_seed": result.env_steps, "wall_s": wall,
                  "env_steps_per_s": len(seeds) * result.env_steps / wall,
                  "device": str(jax.devices()[0])}}))
"""

ES_GENERATIONS = """
import json, time, jax, jax.numpy as jnp, numpy as np
from scorefn import es
rows = []
for d in {dims}:
    x0 = np.full(d, 1.0, np.float32)
    options = dict(sigma0=0.5, seed=0, generations_per_call=10, tol_f=-1.0, tol_x=0.0)
    es.minimize(es.sphere, x0, "snes", max_evaluations=1, **options)  # compile
    first = es.minimize(es.sphere, x0, "snes", max_evaluations=1, **options)
    started = time.perf_counter()
    result = es.minimize(es.sphere, x0, "snes", max_evaluations=first.evaluations * 50, **options)
    wall = time.perf_counter() - started
    rows.append({{"d": d, "generations": result.generations, "ms_per_generation":
                 1e3 * wall / max(result.generations, 1), "device": str(jax.devices()[0])}})
print(json.dumps(rows))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_results.md")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a CPU")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}; "
                     f"known: {', '.join(PARTS)}")
    if args.skip_tests:
        parts.discard("tests")
    python = sys.executable
    quick = args.quick
    lines = [f"# scorefn on {platform.node()} ({'quick' if quick else 'full'} run)", ""]
    probe = run([python, "-c", "import jax, numpyro, scorefn; print(jax.__version__, "
                 "numpyro.__version__, jax.devices())"], 300)
    lines += [f"Python {platform.python_version()}; jax, numpyro, devices: {probe[1]}", ""]

    if "tests" in parts:
        workers = "2" if quick else "8"
        selection = ["tests/scorefn/test_estimators.py"] if quick else []
        status, tail, wall = run([python, "-m", "pytest", "-q", "-n", workers, "-p",
                                  "no:cacheprovider", *selection], 600 if not quick else 300)
        summary = [line for line in tail.splitlines() if " passed" in line or " failed" in line]
        failed = [line for line in tail.splitlines() if line.startswith("FAILED")]
        lines += ["## Test suite", "", f"{status} in {wall:.0f} s: "
                  f"{summary[-1] if summary else 'no summary line'}", ""]
        lines += [f"- {line}" for line in failed] + ([""] if failed else [])

    if "core" in parts:
        status, tail, wall = run([python, os.path.join(HERE, "core.py"), "--quick",
                                  "--no-torch"], 600)
        lines += ["## Core estimator (benchmarks/core.py --quick --no-torch)", "",
                  f"{status} in {wall:.0f} s", "", "```", tail, "```", ""]

    if "ppo" in parts:
        seeds, steps = (4, 4096) if quick else (64, 100_000)
        status, tail, wall = run([python, "-c", PPO_SEEDS.format(seeds=seeds, steps=steps)],
                                 600)
        lines += ["## Many-seed PPO on CartPole (gymnax, vmapped seeds)", "", f"{status}:"]
        try:
            row = json.loads(tail.splitlines()[-1])
            lines += ["", "| seeds | env steps per seed | wall s | env steps per s | device |",
                      "|---|---|---|---|---|",
                      f"| {row['seeds']} | {row['env_steps_per_seed']:,} | {row['wall_s']:.1f} "
                      f"| {row['env_steps_per_s']:,.0f} | {row['device']} |", ""]
        except (ValueError, IndexError, KeyError):
            lines += ["", "```", tail, "```", ""]

    if "es" in parts:
        dims = [10, 1000] if quick else [1000, 10_000, 100_000, 1_000_000]
        status, tail, wall = run([python, "-c", ES_GENERATIONS.format(dims=dims)], 600)
        lines += ["## SNES generations on the sphere", "", f"{status}:"]
        try:
            rows = json.loads(tail.splitlines()[-1])
            lines += ["", "| d | generations | ms per generation | device |",
                      "|---|---|---|---|"]
            lines += [f"| {r['d']:,} | {r['generations']} | {r['ms_per_generation']:.3f} | "
                      f"{r['device']} |" for r in rows] + [""]
        except (ValueError, IndexError, KeyError):
            lines += ["", "```", tail, "```", ""]

    if "brax" in parts:
        # Each side of each task is its own process with its own limit (brax_ppo.py).
        table = os.path.join(os.path.dirname(os.path.abspath(args.out)), "brax_ppo.md")
        status, tail, wall = run([python, os.path.join(HERE, "brax_ppo.py"), "--out", table,
                                  "--json", table.removesuffix(".md") + ".json",
                                  "--networks", "brax",
                                  *(["--quick"] if quick else ["--tasks", "ant"])], 540)
        lines += ["## PPO against brax's own on brax's tasks (benchmarks/brax_ppo.py)", "",
                  f"{status} in {wall:.0f} s", ""]
        lines += (open(table).read().splitlines() if os.path.exists(table) and status == "ok"
                  else ["```", tail, "```"]) + [""]

    if "scale" in parts:
        # Sharded runs: the population, seeds, data or particles split across every
        # accelerator (benchmarks/scale.py); with one device there is nothing to split.
        count = run([python, "-c", "import jax; print(jax.device_count())"], 300)[1]
        count = count.splitlines()
        devices = int(count[-1]) if count and count[-1].strip().isdigit() else 1
        lines += ["## Across devices (benchmarks/scale.py)", ""]
        if devices > 1:
            scaled = "es,programs" if quick else "es,rl,vi,programs"
            status, tail, wall = run([python, os.path.join(HERE, "scale.py"), "--n",
                                      str(devices), "--parts", scaled, "--repeats",
                                      "1" if quick else "3"], 1200)
            lines += [f"{status} in {wall:.0f} s", "", "```", tail, "```", ""]
        else:
            lines += ["One device: nothing to split.", ""]

    text = "\n".join(lines)
    with open(args.out, "w") as fh:
        fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
