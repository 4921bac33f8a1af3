"""Evaluating f in a local process pool and on Ray gives the same run as evaluating it here."""

import os

import numpy as np
import pytest

from scorefn import es

X0 = np.random.default_rng(1).uniform(-3, 3, 5)


def numpy_rastrigin(x):
    return float(10.0 * x.size + np.sum(x * x - 10.0 * np.cos(2 * np.pi * x)))


@pytest.mark.slow
def test_process_pool_matches_in_process():
    options = dict(sigma0=1.0, seed=7, max_evaluations=160, tol_f=-1.0)
    here = es.minimize(numpy_rastrigin, X0, "snes", evaluator="python", **options)
    pool = es.minimize(numpy_rastrigin, X0, "snes", evaluator="processes", workers=2, **options)
    assert pool.f == here.f and pool.history == here.history and np.array_equal(pool.x, here.x)


def slow_rastrigin(x):
    import time

    time.sleep(60)
    return numpy_rastrigin(x)


def test_process_pool_with_bounds_matches_in_process():
    options = dict(sigma0=1.0, seed=3, max_evaluations=80, tol_f=-1.0, bounds=(-2.0, 2.0))
    x0 = np.clip(X0, -1.9, 1.9)
    here = es.minimize(numpy_rastrigin, x0, "snes", evaluator="python", **options)
    pool = es.minimize(numpy_rastrigin, x0, "snes", evaluator="processes", workers=2, **options)
    assert pool.f == here.f and pool.history == here.history


def test_process_pool_refuses_an_f_it_cannot_send():
    with pytest.raises(TypeError, match="cannot be pickled.*evaluator='ray'"):
        es.minimize(lambda x: numpy_rastrigin(x), X0, "snes", evaluator="processes", workers=2,
                    max_evaluations=20)


def test_process_pool_refuses_an_f_typed_into_python_c():
    """Before the check, this run never returned: the spawned workers cannot import f."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom scorefn import es\n"
            "def f(x):\n    return float(np.sum(x * x))\n"
            "es.minimize(f, np.ones(3), 'snes', evaluator='processes', workers=2, "
            "max_evaluations=20)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "TypeError: evaluator='processes' cannot run an f defined in an interactive" in done.stderr


def test_process_pool_timeout_raises_and_stops_the_workers():
    import multiprocessing
    import time

    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="evaluation_timeout: 8 of this generation's 8"):
        es.minimize(slow_rastrigin, X0, "snes", evaluator="processes", workers=2,
                    evaluation_timeout=2.0, max_evaluations=20)
    assert time.perf_counter() - started < 50  # not the 60 s of one evaluation
    deadline = time.perf_counter() + 20  # a terminated worker is reaped, not waited for
    while multiprocessing.active_children() and time.perf_counter() < deadline:
        time.sleep(0.2)
    assert not multiprocessing.active_children(), "workers left running after the timeout"
    with pytest.raises(ValueError, match="evaluation_timeout must be a positive number"):
        es.minimize(numpy_rastrigin, X0, "snes", evaluator="processes", evaluation_timeout=0)


def run_ray_scenario(name, tmp_path):
    """A scenario of ray_scenarios.py in a fresh interpreter (why: see that file)."""
    import json
    import subprocess
    import sys

    pytest.importorskip("ray")
    script = os.path.join(os.path.dirname(__file__), "ray_scenarios.py")
    done = subprocess.run([sys.executable, script, name, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_ray_matches_local_and_retries_a_dead_worker(tmp_path):
    result = run_ray_scenario("retries_a_dead_worker", tmp_path)
    assert result["died"], "the planted worker death did not happen"
    assert result["same_f"] and result["same_history"] and result["same_evaluations"]


@pytest.mark.slow
def test_ray_timeout_raises(tmp_path):
    result = run_ray_scenario("times_out", tmp_path)
    assert result["error"] is not None, "no TimeoutError"
    assert "did not finish within 2.0 s on evaluator='ray'" in result["error"]
    assert result["seconds"] < 50


def test_evaluator_argument_errors():
    with pytest.raises(ValueError, match="evaluator must be one of"):
        es.minimize(numpy_rastrigin, X0, "snes", evaluator="dask")
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        es.minimize(numpy_rastrigin, X0, "snes", evaluator="processes", workers=0)
