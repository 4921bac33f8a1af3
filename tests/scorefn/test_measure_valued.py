"""The measure-valued (weak-derivative) estimator against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from closed_forms import (
    assert_unbiased,
    bernoulli_rebar,
    normal_square,
    normal_step,
    poisson_square,
    repeated,
    variance_z,
)
from jax.flatten_util import ravel_pytree

import scorefn
from scorefn.measure_valued import measure_valued_grad

PROBLEMS = [normal_square, normal_step, poisson_square, bernoulli_rebar]


@pytest.mark.parametrize("make_problem", PROBLEMS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("coupling", [True, False], ids=["coupled", "uncoupled"])
def test_measure_valued_is_unbiased(make_problem, coupling):
    problem = make_problem()

    def one(k):
        g = measure_valued_grad(problem.f, problem.dist_fn, problem.params, k, 20,
                                coupling=coupling)
        return ravel_pytree(g)[0]

    estimates = np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(
        jax.random.split(jax.random.key(80), 2000)), np.float64)
    assert_unbiased(estimates, problem.true_grad)


def test_maxwell_gaussian_coupling_lowers_the_variance_of_the_scale_derivative():
    problem = normal_square()

    def run(coupling, key):
        def one(k):
            return ravel_pytree(measure_valued_grad(problem.f, problem.dist_fn, problem.params, k,
                                                    20, coupling=coupling))[0]
        return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(jax.random.split(key, 2000)),
                          np.float64)

    z = variance_z(run(True, jax.random.key(81)), run(False, jax.random.key(82)))
    assert np.all(z[3:] < -4), np.round(z, 1)  # the log-scale coordinates


@pytest.mark.slow
def test_grad_estimator_option_and_compare():
    problem = normal_step()
    estimates = repeated(problem, jax.random.key(83), 20, 2000, estimator="measure_valued")
    assert_unbiased(estimates, problem.true_grad)
    table = scorefn.compare(problem.f, problem.dist_fn, problem.params, jax.random.key(84),
                            num_samples=20, num_repeats=200, reference=problem.true_grad,
                            print_table=False)
    assert table["measure_valued"].max_abs_z < 4
    # On a step function the weak derivative beats the plain score function.
    assert table["measure_valued"].total_variance < table["score"].total_variance


def test_unsupported_distribution_is_a_clear_error(key):
    with pytest.raises(ValueError, match="decompositions for Normal, Poisson and Bernoulli.*Gamma"):
        scorefn.grad(lambda x: jnp.sum(x), lambda p: dist.Gamma(p["a"], 1.0),
                     {"a": jnp.ones(2)}, key, 10, estimator="measure_valued")
    with pytest.raises(ValueError, match="takes none of them"):
        scorefn.grad(lambda x: jnp.sum(x), lambda p: dist.Normal(p["a"], 1.0), {"a": jnp.ones(2)},
                     key, 10, estimator="measure_valued", baseline=1.0)


def test_to_event_distributions_give_the_batched_estimate():
    """Normal(loc, σ).to_event(1), written the numpyro way, is the batched Normal for the
    measure-valued estimator: the same key gives the same estimate, and it is 2·loc."""
    params = {"loc": jnp.array([0.5, -1.0, 2.0])}

    def f(x):
        return jnp.sum(x**2)

    batched = scorefn.grad(f, lambda p: dist.Normal(p["loc"], 1.0), params, jax.random.key(3),
                           200, estimator="measure_valued")
    event = scorefn.grad(f, lambda p: dist.Normal(p["loc"], 1.0).to_event(1), params,
                         jax.random.key(3), 200, estimator="measure_valued")
    np.testing.assert_array_equal(batched["loc"], event["loc"])
    np.testing.assert_allclose(event["loc"], 2 * params["loc"], atol=0.3)


def test_per_sample_terms_average_to_the_estimate():
    """per_sample=True gives each sample's term (a leading axis of N on every leaf); their
    mean is the estimate from the same key, and their spread is the estimator's."""
    problem = normal_square()
    common = (problem.f, problem.dist_fn, problem.params, jax.random.key(5), 50)
    total = scorefn.grad(*common, estimator="measure_valued")
    terms = scorefn.grad(*common, estimator="measure_valued", per_sample=True)
    for name, leaf in problem.params.items():
        assert terms[name].shape == (50, *leaf.shape)
        np.testing.assert_allclose(jnp.mean(terms[name], axis=0), total[name], rtol=1e-5,
                                   atol=1e-6)
        assert np.any(np.std(terms[name], axis=0) > 0)  # (f = Σx² is even around loc = 0)
