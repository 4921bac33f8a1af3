"""Runs across processes (scorefn.runs.processes): two local processes under
jax.distributed give the one-process run, write their files once, and a checkpoint resumes
on another process count; the command's options are checked."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn.cli.processes import without_processes
from scorefn.runs import processes


def scorefn_json(*argv, cwd):
    done = subprocess.run([sys.executable, "-m", "scorefn", *argv, "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # five ES runs, two of them across processes
def test_es_across_two_processes_is_the_one_process_run(tmp_path):
    command = ("optimize", "--function", "rastrigin", "--dim", "10")
    one = scorefn_json(*command, "--max-evals", "2000", cwd=tmp_path)
    two = scorefn_json(*command, "--max-evals", "2000", "--processes", "2", cwd=tmp_path)
    assert two["best_f"] == pytest.approx(one["best_f"], rel=1e-5)
    assert two["evaluations"] == one["evaluations"]
    # written by two processes, resumed by one: the uninterrupted run
    scorefn_json(*command, "--max-evals", "1000", "--processes", "2", "--checkpoint", "c.ckpt",
                 cwd=tmp_path)
    resumed = scorefn_json(*command, "--max-evals", "2000", "--checkpoint", "c.ckpt", "--resume",
                           cwd=tmp_path)
    assert resumed["best_f"] == pytest.approx(one["best_f"], rel=1e-5)
    other_seed = scorefn_json(*command, "--max-evals", "2000", "--seed", "1", cwd=tmp_path)
    assert other_seed["best_f"] != pytest.approx(one["best_f"], rel=1e-5)


@pytest.mark.slow  # three compiled RL runs
def test_rl_across_two_processes_splits_the_seeds_and_writes_once(tmp_path):
    command = ("rl", "train", "--env", "CartPole-v1", "--seeds", "0,1", "--eval-every", "512",
               "--set", "num_epochs=2")
    two = scorefn_json(*command, "--total-steps", "1024", "--processes", "2", "--log-dir", "two",
                       cwd=tmp_path)
    one = scorefn_json(*command, "--total-steps", "1024", "--log-dir", "one", cwd=tmp_path)
    np.testing.assert_allclose(two["eval_mean"], one["eval_mean"], rtol=1e-5)
    rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # one row per evaluation: process 0 alone writes
    assert (tmp_path / "two" / "learning_curve.png").stat().st_size > 0
    resumed = scorefn_json(*command, "--total-steps", "2048", "--log-dir", "two", "--resume",
                           cwd=tmp_path)
    whole = scorefn_json(*command, "--total-steps", "2048", "--log-dir", "whole", cwd=tmp_path)
    assert resumed["eval_mean"] == whole["eval_mean"]


VI_SCRIPT = textwrap.dedent("""
    import json, sys
    from scorefn.runs import processes
    processes.initialize_from_environment()
    import jax, jax.numpy as jnp
    import numpyro, numpyro.distributions as dist
    from scorefn import vi

    X = jax.random.normal(jax.random.key(0), (64, 3))
    y = (X @ jnp.array([1.0, -2.0, 0.5]) > 0).astype(jnp.float32)

    def logistic(X, y):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

    result = vi.fit(logistic, None, (X, y), jax.random.key(2), estimator="score",
                    num_samples=4, steps=200, progress=False, devices=jax.device_count(),
                    checkpoint=sys.argv[1])

    import scorefn  # a program's particles, split across the processes' devices

    def program(p, x):
        z = numpyro.sample("z", dist.Bernoulli(logits=p["a"]))
        numpyro.factor("f", -(p["m"] + z - x) ** 2)

    params = {"a": jnp.array(0.3), "m": jnp.array(0.1)}
    grad = jax.jit(lambda p, k: scorefn.programs.grad(program, p, k, 1.0, num_particles=16,
                                                      devices=jax.device_count()))
    g = processes.to_host(grad(params, jax.random.key(0)))
    if processes.is_main():
        print(json.dumps({"objective": result.objective.tolist(),
                          "grad": [float(g["a"]), float(g["m"])],
                          "processes": jax.process_count()}))
""")


@pytest.mark.slow  # two pairs of processes, each compiling a fit or a program
def test_vi_and_programs_across_two_processes(tmp_path):
    """A script of one's own under ``python -m scorefn.runs.processes 2``: the data split
    across the two processes' devices gives the one-process ELBO trace, a program's
    particles split across them the one-process gradient."""
    script = tmp_path / "fit.py"
    script.write_text(VI_SCRIPT)

    def run(*launcher, checkpoint):
        done = subprocess.run([sys.executable, *launcher, str(script), str(tmp_path / checkpoint)],
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    two = run("-m", "scorefn.runs.processes", "2", checkpoint="two.ckpt")
    one = run(checkpoint="one.ckpt")
    assert two["processes"] == 2 and one["processes"] == 1
    np.testing.assert_allclose(two["objective"], one["objective"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(two["grad"], one["grad"], rtol=1e-5, atol=1e-6)
    assert os.path.getsize(tmp_path / "two.ckpt") > 0


def test_process_options_are_checked(tmp_path):
    def status(*argv):
        return subprocess.run([sys.executable, "-m", "scorefn", *argv], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    both = status("optimize", "--function", "sphere", "--processes", "2", "--coordinator",
                  "127.0.0.1:1234")
    assert both.returncode == 2 and "give one of them" in both.stderr
    alone = status("optimize", "--function", "sphere", "--coordinator", "127.0.0.1:1234")
    assert alone.returncode == 2 and "needs --num-processes and --process-id" in alone.stderr
    usage = subprocess.run([sys.executable, "-m", "scorefn.runs.processes", "two", "x.py"],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_helpers_with_one_process():
    assert without_processes(["optimize", "--processes", "2", "--json"]) == ["optimize", "--json"]
    assert without_processes(["fit", "--processes=3"]) == ["fit"]
    tree = {"a": jnp.arange(3.0), "k": jax.random.key(0), "n": 1}
    host = processes.to_host(tree)  # one process: every array is addressable, kept as it is
    assert host["a"] is tree["a"] and host["k"] is tree["k"] and host["n"] == 1
    processes.barrier("one process: no wait")
    assert processes.is_main()
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        processes.initialize("127.0.0.1:1", 2, 2)
    assert isinstance(processes.free_port(), int)
