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


@pytest.fixture(scope="module")
def local_ray():
    import sys

    ray = pytest.importorskip("ray")
    # Ray's workers cannot import this test module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_local_and_retries_a_dead_worker(local_ray, tmp_path):
    marker = str(tmp_path / "died-once")

    def dies_once(x):
        # The first evaluation of the third generation's first candidate kills its worker.
        if abs(x[0] - dies_once.target) < 1e-12 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return numpy_rastrigin(x)

    options = dict(sigma0=1.0, seed=7, max_evaluations=160, tol_f=-1.0)
    here = es.minimize(numpy_rastrigin, X0, "snes", evaluator="python", **options)
    candidates = []
    es.minimize(lambda x: candidates.append(np.array(x)) or numpy_rastrigin(x), X0, "snes",
                evaluator="python", **options)
    dies_once.target = float(candidates[2 * 8][0])  # λ = 8 for d = 5
    on_ray = es.minimize(dies_once, X0, "snes", evaluator="ray", **options)
    assert os.path.exists(marker), "the planted worker death did not happen"
    assert on_ray.f == here.f and on_ray.history == here.history
    assert on_ray.evaluations == here.evaluations


def test_evaluator_argument_errors():
    with pytest.raises(ValueError, match="evaluator must be one of"):
        es.minimize(numpy_rastrigin, X0, "snes", evaluator="dask")
    with pytest.raises(ValueError, match="workers must be a positive int"):
        es.minimize(numpy_rastrigin, X0, "snes", evaluator="processes", workers=0)
