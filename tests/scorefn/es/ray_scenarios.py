"""Ray runs for test_evaluators.py, each in a fresh interpreter.

Ray starts its processes (GCS, raylet) with a Python ``preexec_fn`` after ``fork``; in a
process where JAX's threads already run, that child can deadlock (the pytest worker that
ran other tests is such a process). Here ``ray.init`` comes before JAX starts any thread.

Usage: ``python ray_scenarios.py SCENARIO TMP_DIR``; prints one JSON line.
"""

import json
import os
import sys

import ray

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

import numpy as np  # noqa: E402

from scorefn import es  # noqa: E402

X0 = np.random.default_rng(1).uniform(-3, 3, 5)
OPTIONS = dict(sigma0=1.0, seed=7, max_evaluations=160, tol_f=-1.0)


def numpy_rastrigin(x):
    return float(10.0 * x.size + np.sum(x * x - 10.0 * np.cos(2 * np.pi * x)))


def retries_a_dead_worker(tmp_dir):
    marker = os.path.join(tmp_dir, "died-once")
    candidates = []
    here = es.minimize(lambda x: candidates.append(np.array(x)) or numpy_rastrigin(x), X0,
                       "snes", evaluator="python", **OPTIONS)
    target = float(candidates[2 * 8][0])  # λ = 8 for d = 5

    def dies_once(x):
        # The first evaluation of the third generation's first candidate kills its worker.
        if abs(x[0] - target) < 1e-12 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return numpy_rastrigin(x)

    on_ray = es.minimize(dies_once, X0, "snes", evaluator="ray", **OPTIONS)
    return {"died": os.path.exists(marker), "same_f": on_ray.f == here.f,
            "same_history": on_ray.history == here.history,
            "same_evaluations": on_ray.evaluations == here.evaluations}


def times_out(tmp_dir):
    import time

    def slow(x):
        time.sleep(60)
        return numpy_rastrigin(x)

    started = time.perf_counter()
    try:
        es.minimize(slow, X0, "snes", evaluator="ray", evaluation_timeout=2.0,
                    max_evaluations=20)
    except TimeoutError as error:
        return {"error": str(error), "seconds": time.perf_counter() - started}
    return {"error": None}


if __name__ == "__main__":
    scenario, tmp_dir = sys.argv[1:3]
    result = {"retries_a_dead_worker": retries_a_dead_worker, "times_out": times_out}[scenario](tmp_dir)
    ray.shutdown()
    print(json.dumps(result))
