"""Control variates: unbiased against closed forms, and lower variance where they should."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from closed_forms import (
    ALL_PROBLEMS,
    assert_unbiased,
    detects_bias,
    normal_exp,
    normal_square,
    normal_step,
    repeated,
    variance_z,
)
from jaxpr_checks import dot_precisions

import scorefn
from scorefn import control_variates as cv

DELTA_PROBLEMS = [p for p in ALL_PROBLEMS if p().differentiable_f]


@pytest.mark.parametrize("make_problem", ALL_PROBLEMS, ids=lambda m: m.__name__)
def test_score_control_variate_is_unbiased(make_problem):
    problem = make_problem()
    estimates = repeated(problem, jax.random.key(40), 50, 2000, control_variate=cv.score())
    assert_unbiased(estimates, problem.true_grad)


@pytest.mark.parametrize("make_problem", DELTA_PROBLEMS, ids=lambda m: m.__name__)
def test_delta_method_control_variate_is_unbiased(make_problem):
    problem = make_problem()
    estimates = repeated(problem, jax.random.key(41), 50, 2000,
                         control_variate=cv.delta_method(problem.f))
    assert_unbiased(estimates, problem.true_grad)


@pytest.mark.parametrize("make_problem", [normal_square, normal_step], ids=lambda m: m.__name__)
@pytest.mark.parametrize("coefficient", ["optimal", 0.7])
def test_generic_control_variate_is_unbiased(make_problem, coefficient):
    problem = make_problem()
    control = cv.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean), coefficient=coefficient)
    estimates = repeated(problem, jax.random.key(42), 50, 2000, control_variate=control)
    assert_unbiased(estimates, problem.true_grad)


def test_check_fails_on_a_planted_wrong_expectation():
    """A control variate whose 'known' mean is off by a θ-dependent term biases the estimate."""
    problem = normal_square()
    wrong = cv.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean) + jnp.sum(d.scale), 1.0)
    estimates = repeated(problem, jax.random.key(42), 50, 2000, control_variate=wrong)
    assert detects_bias(estimates, problem.true_grad)


@pytest.mark.parametrize("make_problem", [normal_square, normal_step], ids=lambda m: m.__name__)
def test_batch_fitted_coefficient_bias_is_visible_at_small_n(make_problem):
    """β fitted on the same batch (optimal_batch) is biased at N = 5; leave-one-out is not."""
    problem = make_problem()

    def control(coefficient):
        return cv.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean), coefficient)

    biased = repeated(problem, jax.random.key(43), 5, 4000, control_variate=control("optimal_batch"))
    unbiased = repeated(problem, jax.random.key(43), 5, 4000, control_variate=control("optimal"))
    assert not control("optimal_batch").unbiased
    assert detects_bias(biased, problem.true_grad)
    assert_unbiased(unbiased, problem.true_grad)


def test_score_control_variate_equals_optimal_baseline(key):
    problem = normal_square()
    a = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 64,
                     control_variate=cv.score())
    b = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 64,
                     baseline=scorefn.baselines.optimal())
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_delta_method_removes_nearly_all_variance_for_a_quadratic():
    """For quadratic f the Taylor expansion is exact: h = f, the estimate is almost exact."""
    problem = normal_square()
    plain = repeated(problem, jax.random.key(44), 100, 500)
    delta = repeated(problem, jax.random.key(44), 100, 500,
                     control_variate=cv.delta_method(problem.f))
    assert np.all(delta.var(0) < 0.02 * plain.var(0))
    assert_unbiased(delta, problem.true_grad)


def test_generic_control_variate_lowers_variance():
    """h(x) = Σ (x - 1)² (known mean Σ (μ - 1)² + σ²), correlated with f = Σ x²: lower
    variance, coordinate by coordinate, by more than 4 standard errors of the log ratio."""
    problem = normal_square()
    control = cv.generic(lambda x: jnp.sum((x - 1) ** 2),
                         lambda d: jnp.sum((d.mean - 1) ** 2 + d.variance))
    plain = repeated(problem, jax.random.key(45), 200, 2000)
    controlled = repeated(problem, jax.random.key(46), 200, 2000, control_variate=control)
    z = variance_z(controlled, plain)
    assert np.all(z < -4), np.round(z, 1)


def test_delta_method_on_a_mvn_uses_its_covariance(key):
    problem = [p for p in ALL_PROBLEMS if p.__name__ == "mvn_quadratic"][0]()
    g = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 200,
                     control_variate=cv.delta_method(problem.f))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(problem.true_grad)):
        np.testing.assert_allclose(a, b, atol=0.05)


def test_delta_method_errors_on_a_batch_of_multivariate_normals(key):
    params = {"loc": jnp.zeros((2, 3))}

    def dist_fn(p):
        return dist.MultivariateNormal(p["loc"], jnp.eye(3))

    with pytest.raises(ValueError, match="delta_method needs a distribution with independent"):
        scorefn.grad(lambda x: jnp.sum(x**2), dist_fn, params, key, 10,
                     control_variate=cv.delta_method(lambda x: jnp.sum(x**2)))


def test_control_variate_argument_errors(key):
    problem = normal_square()
    with pytest.raises(TypeError, match="control_variate must come from"):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 10, control_variate="x")
    with pytest.raises(ValueError, match="coefficient must be"):
        cv.score(coefficient="best")
    with pytest.raises(TypeError, match="delta_method needs"):
        cv.delta_method(None)


def test_delta_method_accepts_to_event_distributions():
    params = {"loc": jnp.array([0.5, -1.0, 2.0])}

    def f(x):
        return jnp.sum(x**2) + jnp.prod(x)

    cv = scorefn.control_variates.delta_method(f)
    batched = scorefn.grad(f, lambda p: dist.Normal(p["loc"], 1.0), params, jax.random.key(4),
                           500, control_variate=cv)
    event = scorefn.grad(f, lambda p: dist.Normal(p["loc"], 1.0).to_event(1), params,
                         jax.random.key(4), 500, control_variate=cv)
    np.testing.assert_allclose(batched["loc"], event["loc"], rtol=1e-5, atol=1e-6)


def test_delta_method_products_ask_for_full_precision():
    """The cancelling products h(x) and E[h] are traced at HIGHEST precision, so a GPU does not
    run them in TF32 (on the CPU the jaxpr is where this shows)."""
    problem = normal_square()
    h, mean_fn = cv.delta_method(problem.f).prepare(problem.dist_fn, problem.params)
    x = jnp.ones(3)
    for precisions in (dot_precisions(h, x), dot_precisions(mean_fn, problem.params)):
        assert precisions and all("HIGHEST" in p for p in precisions), precisions
    # the helper is a scope, not a global switch
    assert all("HIGHEST" not in p for p in dot_precisions(jnp.dot, x, x))


def test_delta_method_supports_independent_and_single_multivariate_events():
    assert cv.delta_method_supports(dist.Normal(jnp.zeros(3), 1.0))
    assert cv.delta_method_supports(dist.Normal(jnp.zeros(3), 1.0).to_event(1))
    assert cv.delta_method_supports(dist.MultivariateNormal(jnp.zeros(2), jnp.eye(2)))
    assert not cv.delta_method_supports(
        dist.MultivariateNormal(jnp.zeros((4, 2)), jnp.eye(2)))   # a batch of MVNs


@pytest.mark.parametrize("estimator,repeats", [("pathwise", 2000), ("measure_valued", 1000)])
def test_delta_method_with_pathwise_and_measure_valued_is_unbiased_and_lowers_the_variance(
        estimator, repeats):
    problem = normal_exp()
    plain = repeated(problem, jax.random.key(41), 20, repeats, estimator=estimator)
    controlled = repeated(problem, jax.random.key(42), 20, repeats, estimator=estimator,
                          control_variate=cv.delta_method(problem.f))
    assert_unbiased(controlled, problem.true_grad)
    assert np.all(variance_z(controlled, plain) < -4)
    # a control whose mean is wrong (E[x²] without the σ² term) is caught
    wrong = cv.generic(lambda x: jnp.sum(x**2), lambda d: jnp.sum(d.mean**2), coefficient=1.0)
    assert detects_bias(repeated(problem, jax.random.key(43), 20, repeats, estimator=estimator,
                                 control_variate=wrong), problem.true_grad)


def test_control_variates_only_where_they_apply(key):
    problem = normal_exp()
    with pytest.raises(ValueError, match="control variates apply to the score-function, "
                                         "pathwise and measure-valued estimators"):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 10, estimator="arm",
                     control_variate=cv.score())
    terms = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 30,
                         estimator="pathwise", per_sample=True,
                         control_variate=cv.delta_method(problem.f))
    mean = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 30,
                        estimator="pathwise", control_variate=cv.delta_method(problem.f))
    np.testing.assert_allclose(jnp.mean(terms["loc"], axis=0), mean["loc"], rtol=1e-5)


def test_coefficient_names():
    batch = cv.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean), "optimal_batch")
    assert batch.coefficient == "optimal_batch" and not batch.unbiased
    with pytest.raises(ValueError, match="coefficient must be 'optimal', 'optimal_batch' or a number"):
        cv.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean), "optimal-batch")
    with pytest.raises(ValueError, match="coefficient must be 'optimal', 'optimal_batch' or a number"):
        cv.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean), "best")
    for bad in (float("nan"), float("inf"), jnp.array([1.0, jnp.nan])):  # every estimate NaN
        with pytest.raises(ValueError, match="coefficient must be finite"):
            cv.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean), bad)
        with pytest.raises(ValueError, match="coefficient must be finite"):
            cv.delta_method(lambda x: jnp.sum(x), bad)
