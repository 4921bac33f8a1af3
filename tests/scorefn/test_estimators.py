"""The score-function and pathwise estimators against closed-form gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from closed_forms import (
    ALL_PROBLEMS,
    assert_unbiased,
    detects_bias,
    normal_square,
    repeated,
)
from jax.flatten_util import ravel_pytree

import scorefn

NUM_SAMPLES = 50
NUM_REPEATS = 2000


@pytest.mark.parametrize("make_problem", ALL_PROBLEMS, ids=lambda m: m.__name__)
def test_score_estimator_is_unbiased(make_problem):
    problem = make_problem()
    estimates = repeated(problem, jax.random.key(1), NUM_SAMPLES, NUM_REPEATS)
    assert_unbiased(estimates, problem.true_grad)


@pytest.mark.parametrize(
    "make_problem",
    [p for p in ALL_PROBLEMS if p().reparameterised and p().differentiable_f],
    ids=lambda m: m.__name__,
)
def test_pathwise_estimator_is_unbiased(make_problem):
    problem = make_problem()
    estimates = repeated(problem, jax.random.key(2), NUM_SAMPLES, NUM_REPEATS, estimator="pathwise")
    assert_unbiased(estimates, problem.true_grad)


class HalfOwnValue(scorefn.baselines.Baseline):
    """A planted bias: b_n = f_n / 2 uses the sample's own value, halving the gradient."""

    name = "half-own-value"
    unbiased = False

    def __call__(self, values, scores=None):
        return 0.5 * values


class OwnScore(scorefn.baselines.Baseline):
    """A planted bias for any problem: b_nj = f_n - g_nj uses the sample's own score, so
    each term becomes g_nj² and the estimate the Fisher diagonal instead of the gradient."""

    name = "own-score"
    unbiased = False
    per_coordinate = True

    def __call__(self, values, scores=None):
        return jax.tree.map(lambda g: values.reshape((-1,) + (1,) * (g.ndim - 1)) - g, scores)


@pytest.mark.parametrize("make_problem", ALL_PROBLEMS, ids=lambda m: m.__name__)
def test_unbiasedness_check_fails_on_planted_bias(make_problem):
    problem = make_problem()
    # Halving the gradient is invisible on the REBAR toy, whose gradient (0.002) is far below
    # one estimate's noise; the own-score plant biases it by the Fisher diagonal (~0.2).
    planted = OwnScore() if problem.name == "bernoulli-rebar" else HalfOwnValue()
    estimates = repeated(problem, jax.random.key(1), NUM_SAMPLES, NUM_REPEATS, baseline=planted)
    assert detects_bias(estimates, problem.true_grad)


def test_grad_returns_params_shaped_pytree(key):
    problem = normal_square()
    g = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 100)
    assert jax.tree.structure(g) == jax.tree.structure(problem.params)
    for leaf, ref in zip(jax.tree.leaves(g), jax.tree.leaves(problem.params)):
        assert leaf.shape == ref.shape and leaf.dtype == ref.dtype


def test_issue_example_same_key_same_bits_eager_and_jit():
    def dist_fn(p):
        return dist.Normal(p["loc"], jnp.exp(p["log_scale"]))

    def f(x):
        return jnp.sum(x**2, -1)

    params = {"loc": jnp.ones(100), "log_scale": jnp.log(0.5) * jnp.ones(100)}

    def estimate(p, k):
        return scorefn.grad(f, dist_fn, p, k, num_samples=1000, estimator="score",
                            baseline=scorefn.baselines.leave_one_out())

    eager = [estimate(params, jax.random.key(0)) for _ in range(2)]
    jitted = jax.jit(estimate)
    compiled = [jitted(params, jax.random.key(0)) for _ in range(2)]
    flat = [np.asarray(ravel_pytree(g)[0]) for g in eager + compiled]
    np.testing.assert_array_equal(flat[0], flat[1])
    np.testing.assert_array_equal(flat[2], flat[3])
    np.testing.assert_allclose(flat[0], flat[2], rtol=1e-5, atol=1e-5)
    other = np.asarray(ravel_pytree(jitted(params, jax.random.key(1)))[0])
    assert not np.array_equal(flat[2], other)


def test_vmap_over_keys_matches_loop():
    problem = normal_square()

    def estimate(k):
        return scorefn.grad(problem.f, problem.dist_fn, problem.params, k, 64,
                            baseline=scorefn.baselines.optimal())

    keys = jax.random.split(jax.random.key(3), 3)
    batched = jax.vmap(estimate)(keys)
    for i in range(3):
        single = estimate(keys[i])
        for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(b[i], s, rtol=1e-5, atol=1e-6)


def test_vmap_over_params():
    problem = normal_square()
    stacked = jax.tree.map(lambda x: jnp.stack([x, x + 0.1]), problem.params)
    out = jax.vmap(lambda p: scorefn.grad(problem.f, problem.dist_fn, p, jax.random.key(0), 32))(
        stacked
    )
    assert out["loc"].shape == (2, 3)


def test_three_step_split_with_python_f_equals_one_call(key):
    problem = normal_square()
    x = scorefn.sample(problem.dist_fn, problem.params, key, 200)
    values = np.sum(np.asarray(x) ** 2, axis=1)  # plain NumPy: f can run anywhere
    three_step = scorefn.score_grad(problem.dist_fn, problem.params, x, values,
                                    baseline=scorefn.baselines.leave_one_out())
    one_call = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 200,
                            baseline=scorefn.baselines.leave_one_out())
    for a, b in zip(jax.tree.leaves(three_step), jax.tree.leaves(one_call)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_vectorized_f_is_called_on_the_batch(key):
    problem = normal_square()
    calls = []

    def batch_f(x):
        calls.append(x.shape)
        return jnp.sum(x**2, -1)

    g = scorefn.grad(batch_f, problem.dist_fn, problem.params, key, 40, vectorized=True)
    assert calls == [(40, 3)]
    ref = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 40)
    np.testing.assert_allclose(g["loc"], ref["loc"], rtol=1e-6)


@pytest.mark.parametrize(
    "options",
    [{}, {"baseline": scorefn.baselines.leave_one_out()}, {"baseline": scorefn.baselines.optimal()},
     {"control_variate": scorefn.control_variates.score()}],
    ids=["none", "loo", "optimal", "score-cv"],
)
def test_per_sample_contributions_average_to_the_estimate(key, options):
    problem = normal_square()
    per = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 30, per_sample=True,
                       **options)
    est = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 30, **options)
    assert per["loc"].shape == (30, 3)
    for p, e in zip(jax.tree.leaves(per), jax.tree.leaves(est)):
        np.testing.assert_allclose(p.mean(0), e, rtol=1e-4, atol=1e-5)


def test_pathwise_per_sample_contributions(key):
    problem = normal_square()
    per = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 30, estimator="pathwise",
                       per_sample=True)
    est = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 30, estimator="pathwise")
    np.testing.assert_allclose(per["loc"].mean(0), est["loc"], rtol=1e-5)
    # One sample's pathwise gradient of x² in μ is 2x.
    x = problem.dist_fn(problem.params).rsample(key, (30,))
    np.testing.assert_allclose(per["loc"], 2 * x, rtol=1e-5)


def test_pathwise_per_sample_memory_is_linear_in_n():
    """20,000 per-sample gradients of a 2-parameter Normal: the compiled program's scratch
    memory stays in megabytes (an N × N reverse-mode Jacobian took 1.6 GB)."""
    def dist_fn(p):
        return dist.Normal(p["loc"], jnp.exp(p["log_scale"]))

    params = {"loc": jnp.zeros(()), "log_scale": jnp.zeros(())}
    program = jax.jit(lambda p, k: scorefn.pathwise_grad(lambda x: x**2, dist_fn, p, k, 20_000,
                                                         per_sample=True))
    compiled = program.lower(params, jax.random.key(0)).compile()
    analysis = compiled.memory_analysis()  # the CPU and GPU backends both report it
    assert analysis is not None and analysis.temp_size_in_bytes < 50e6
    per = program(params, jax.random.key(0))
    x = dist_fn(params).rsample(jax.random.key(0), (20_000,))
    np.testing.assert_allclose(per["loc"], 2 * x, rtol=1e-5)
    np.testing.assert_allclose(per["log_scale"], 2 * x * x, rtol=1e-4, atol=1e-6)


def test_per_sample_scores_match_the_normal_closed_form(key):
    problem = normal_square()
    x = scorefn.sample(problem.dist_fn, problem.params, key, 10)
    scores = scorefn.per_sample_scores(problem.dist_fn, problem.params, x)
    mu, sigma = problem.params["loc"], jnp.exp(problem.params["log_scale"])
    np.testing.assert_allclose(scores["loc"], (x - mu) / sigma**2, rtol=1e-5)
    np.testing.assert_allclose(scores["log_scale"], -1 + (x - mu) ** 2 / sigma**2, rtol=1e-4,
                               atol=1e-5)


def test_standardize_equals_score_grad_on_standardized_values(key):
    problem = normal_square()
    x = scorefn.sample(problem.dist_fn, problem.params, key, 100)
    values = jax.vmap(problem.f)(x)
    a = scorefn.score_grad(problem.dist_fn, problem.params, x, values, standardize=True)
    b = scorefn.score_grad(problem.dist_fn, problem.params, x, scorefn.standardized(values))
    np.testing.assert_allclose(a["loc"], b["loc"], rtol=1e-6)
    z = scorefn.standardized(values)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4
    unbiased = scorefn.standardized(values, ddof=1)  # torch's convention (SB3's advantages)
    assert abs(float(unbiased.std(ddof=1)) - 1) < 1e-4
    np.testing.assert_allclose(unbiased, z * np.sqrt(99 / 100), rtol=1e-4)


def test_max_norm_clips_through_optax(key):
    problem = normal_square()
    raw = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 100)
    clipped = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 100, max_norm=0.1)
    raw_norm = float(jnp.linalg.norm(ravel_pytree(raw)[0]))
    assert raw_norm > 0.1
    np.testing.assert_allclose(float(jnp.linalg.norm(ravel_pytree(clipped)[0])), 0.1, rtol=1e-5)
    np.testing.assert_allclose(ravel_pytree(clipped)[0], ravel_pytree(raw)[0] * 0.1 / raw_norm,
                               rtol=1e-5)


def test_nan_policy_drop_uses_the_finite_samples_only(key):
    problem = normal_square()
    x = scorefn.sample(problem.dist_fn, problem.params, key, 50)
    values = np.asarray(jax.vmap(problem.f)(x)).copy()
    values[[3, 17]] = [np.nan, np.inf]
    dropped = scorefn.score_grad(problem.dist_fn, problem.params, x, values, nan_policy="drop")
    keep = np.isfinite(values)
    ref = scorefn.score_grad(problem.dist_fn, problem.params, x[keep], values[keep])
    np.testing.assert_allclose(dropped["loc"], ref["loc"], rtol=1e-6)


def test_batched_and_pytree_distribution_parameters(key):
    """A (2, 3) batch of Normals with params nested two levels deep."""
    params = {"outer": {"loc": jnp.zeros((2, 3))}, "log_scale": jnp.zeros((2, 3))}

    def dist_fn(p):
        return dist.Normal(p["outer"]["loc"], jnp.exp(p["log_scale"]))

    g = scorefn.grad(lambda x: jnp.sum(x), dist_fn, params, key, 20)
    assert g["outer"]["loc"].shape == (2, 3) and g["log_scale"].shape == (2, 3)


def test_f_values_is_step_two():
    x = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(scorefn.f_values(lambda r: r.sum(), x), [1.0, 5.0, 9.0])
    np.testing.assert_array_equal(scorefn.f_values(lambda b: b.sum(-1), x, vectorized=True),
                                  [1.0, 5.0, 9.0])
