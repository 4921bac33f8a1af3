"""Rao-Blackwellisation keeps the mean of the score function and lowers its variance."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from closed_forms import assert_unbiased, variance_z
from jax.flatten_util import ravel_pytree
from jaxpr_checks import dot_precisions

import scorefn
from scorefn import rao_blackwell

CENTRES = jnp.array([-2.0, 0.5, 3.0])


def mixture_problem():
    """x₁ ~ N(μ, σ²), x₂ ~ Categorical(softmax(l)), f = (x₁ - m_{x₂})²: the squared error of a
    point against its assigned component, as in a Gaussian-mixture likelihood.

    E[f] = Σ_k p_k ((μ - m_k)² + σ²), so ∇μ = Σ_k 2 p_k (μ - m_k), ∇log σ = 2σ² and
    ∇l = p ⊙ (e - pᵀe) with e_k = (μ - m_k)² + σ².
    """
    params = {"loc": jnp.array(0.4), "log_scale": jnp.log(jnp.array(0.8)),
              "logits": jnp.array([0.2, -0.3, 0.5])}
    p = jax.nn.softmax(params["logits"])
    mu, sigma = params["loc"], jnp.exp(params["log_scale"])
    e = (mu - CENTRES) ** 2 + sigma**2
    truth = {"loc": jnp.sum(2 * p * (mu - CENTRES)), "log_scale": 2 * sigma**2,
             "logits": p * (e - p @ e)}

    def marginal_fn(q):
        return dist.Normal(q["loc"], jnp.exp(q["log_scale"]))

    def conditional_fn(q, x1):
        return dist.Categorical(logits=q["logits"])

    def f(x1, k):
        return (x1 - CENTRES[k]) ** 2

    return f, marginal_fn, conditional_fn, params, truth


def _repeated(rao_blackwellize, key, n=20, r=2000, baseline=None):
    f, marginal_fn, conditional_fn, params, _ = mixture_problem()

    def one(k):
        g = rao_blackwell.enumerate_grad(f, marginal_fn, conditional_fn, params, k, n,
                                         baseline=baseline, rao_blackwellize=rao_blackwellize)
        return ravel_pytree(g)[0]

    return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(jax.random.split(key, r)),
                      np.float64)


def test_enumeration_same_mean_lower_variance_on_a_mixture():
    truth = mixture_problem()[-1]
    plain = _repeated(False, jax.random.key(70))
    enumerated = _repeated(True, jax.random.key(71))
    assert_unbiased(plain, truth)
    assert_unbiased(enumerated, truth)
    z = variance_z(enumerated, plain)
    assert np.all(z < -4), np.round(z, 1)


def test_enumeration_with_a_baseline_stays_unbiased():
    truth = mixture_problem()[-1]
    estimates = _repeated(True, jax.random.key(72), baseline=scorefn.baselines.leave_one_out())
    assert_unbiased(estimates, truth)


def test_enumeration_needs_a_finite_support(key):
    f, marginal_fn, _, params, _ = mixture_problem()
    with pytest.raises(ValueError, match="finite, enumerable support.*Normal"):
        rao_blackwell.enumerate_grad(f, marginal_fn, lambda q, x: dist.Normal(0.0, 1.0), params,
                                     key, 10)


def chain_problem():
    """Independent bits x_b ~ Bern(σ(l_b)), f = Σ_t c_t x_t x_{t+1}: term t reads bits t, t+1.
    ∂l_b = p_b(1 - p_b) (c_b p_{b+1} + c_{b-1} p_{b-1})."""
    logits = jnp.array([-0.5, 0.3, 0.0, 1.0, -1.2])
    c = jnp.array([1.0, -2.0, 0.5, 3.0])
    p = jax.nn.sigmoid(logits)
    right = jnp.concatenate([c * p[1:], jnp.zeros(1)])
    left = jnp.concatenate([jnp.zeros(1), c * p[:-1]])
    truth = {"logits": p * (1 - p) * (right + left)}
    dependencies = np.zeros((4, 5))
    for t in range(4):
        dependencies[t, t] = dependencies[t, t + 1] = 1

    def dist_fn(q):
        return dist.Bernoulli(logits=q["logits"])

    def terms(x):
        return c * x[..., :-1] * x[..., 1:]

    return dist_fn, {"logits": logits}, terms, jnp.asarray(dependencies), truth


def _chain_estimates(local, key, baseline=None, n=20, r=3000):
    dist_fn, params, terms, dependencies, _ = chain_problem()

    def one(k):
        x = scorefn.sample(dist_fn, params, k, n)
        t = terms(x)
        if local:
            g = rao_blackwell.local_score_grad(dist_fn, params, x, t, dependencies,
                                               baseline=baseline)
        else:
            g = scorefn.score_grad(dist_fn, params, x, t.sum(-1), baseline=baseline)
        return ravel_pytree(g)[0]

    return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(jax.random.split(key, r)),
                      np.float64)


@pytest.mark.parametrize("baseline", [None, "leave_one_out"])
def test_local_learning_signals_same_mean_lower_variance(baseline):
    truth = chain_problem()[-1]
    b = scorefn.baselines.leave_one_out() if baseline else None
    plain = _chain_estimates(False, jax.random.key(73), b)
    local = _chain_estimates(True, jax.random.key(74), b)
    assert_unbiased(plain, truth)
    assert_unbiased(local, truth)
    z = variance_z(local, plain)
    # Never significantly higher; clearly lower where other factors' terms carried the noise
    # (the last bit's only term is the largest, c = 3, so it gains least).
    assert np.all(z < 2), np.round(z, 1)
    assert np.sum(z < -4) >= 3, np.round(z, 1)


def test_dropping_a_dependency_is_caught_as_bias():
    """A planted bias: forget that term 0 reads bit 1."""
    dist_fn, params, terms, dependencies, truth = chain_problem()
    wrong = dependencies.at[0, 1].set(0.0)

    def one(k):
        x = scorefn.sample(dist_fn, params, k, 20)
        return ravel_pytree(rao_blackwell.local_score_grad(dist_fn, params, x, terms(x), wrong))[0]

    from closed_forms import detects_bias

    estimates = np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(
        jax.random.split(jax.random.key(75), 3000)), np.float64)
    assert detects_bias(estimates, truth)


def test_per_factor_values_in_score_grad(key):
    dist_fn, params, terms, dependencies, _ = chain_problem()
    x = scorefn.sample(dist_fn, params, key, 8)
    signals = rao_blackwell.local_learning_signals(terms(x), dependencies, (5,))
    assert signals.shape == (8, 5)
    a = scorefn.score_grad(dist_fn, params, x, signals, per_factor=True)
    scores_per_factor = (x - jax.nn.sigmoid(params["logits"]))  # ∂ log Bern / ∂ logit
    np.testing.assert_allclose(a["logits"], jnp.mean(signals * scores_per_factor, 0), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="per-factor values .* per-sample baselines"):
        scorefn.score_grad(dist_fn, params, x, signals, baseline=scorefn.baselines.optimal(),
                           per_factor=True)
    with pytest.raises(ValueError, match=r"dependencies must be \(num_terms, prod\(batch_shape\)\)"):
        rao_blackwell.local_learning_signals(terms(x), dependencies[:, :3], (5,))
    with pytest.raises(ValueError, match=r"or \(num_samples, \*batch_shape\) = \(8, 5\)"):
        scorefn.score_grad(dist_fn, params, x, jnp.ones((8, 4)), per_factor=True)
    with pytest.raises(ValueError, match="one scalar per sample"):
        scorefn.score_grad(dist_fn, params, x, signals)  # per-factor values need the opt-in


def test_per_factor_ema_state(key):
    ema = scorefn.baselines.ema(0.5)
    state = ema.init(shape=(5,))
    state = ema.update(jnp.ones((8, 5)) * jnp.arange(5.0), state)
    np.testing.assert_allclose(state.value, jnp.arange(5.0), rtol=1e-6)
    scalar = ema.update(jnp.ones((8, 5)), ema.init())
    assert scalar.value.shape == ()


def test_plate_local_signal_equals_the_dependency_matrix_form():
    """Plates give the dependency matrix D without building it: a term in the factors' plate
    reaches only the factor with its own index, a global term reaches every factor, and a
    term with an extra axis of its own is summed over that axis."""
    key = jax.random.key(3)
    n, b = 5, 4
    in_plate = jax.random.normal(key, (n, b))                             # term t_i, i = 1..B
    global_term = jax.random.normal(jax.random.fold_in(key, 1), (n,))     # reads every x_b
    extra_axis = jax.random.normal(jax.random.fold_in(key, 2), (n, 3, b))  # 3 terms per b
    signals = (rao_blackwell.plate_local_signal(in_plate, [(0, 0)], (b,))
               + rao_blackwell.plate_local_signal(global_term, [], (b,))
               + rao_blackwell.plate_local_signal(extra_axis, [(1, 0)], (b,)))
    terms = jnp.concatenate([in_plate, global_term[:, None], extra_axis.reshape(n, 3 * b)], 1)
    dependencies = jnp.concatenate([jnp.eye(b), jnp.ones((1, b)), jnp.tile(jnp.eye(b), (3, 1))])
    np.testing.assert_allclose(
        signals, rao_blackwell.local_learning_signals(terms, dependencies, (b,)), rtol=1e-5)


def test_local_learning_signals_multiply_at_full_precision():
    """The signals are a matrix product; a GPU's default TF32 would round them."""
    precisions = dot_precisions(lambda t: rao_blackwell.local_learning_signals(
        t, jnp.eye(3), (3,)), jnp.ones((4, 3)))
    assert precisions and all("HIGHEST" in p for p in precisions), precisions
