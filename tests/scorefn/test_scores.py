"""Scores g = ∇θ log p_θ(x): E[g] = 0 for every family, over random parameter values."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import scorefn
from scorefn._numpyro_fixes import log_prob as patched_log_prob

NUM_SAMPLES = 20_000
Z_MAX = 4.5  # many hypothesis examples: a little more room than the single tests' 4


def positive(low=0.2, high=3.0):
    return st.floats(low, high, allow_nan=False)


def real(bound=2.0):
    return st.floats(-bound, bound, allow_nan=False)


FAMILIES = {
    "normal": (
        lambda p: dist.Normal(p["loc"], jnp.exp(p["log_scale"])),
        st.fixed_dictionaries({"loc": real(), "log_scale": real(1.0)}),
    ),
    "mvn": (
        lambda p: dist.MultivariateNormal(
            p["mean"], scale_tril=jnp.array([[p["l00"], 0.0], [p["l10"], p["l11"]]])
        ),
        st.fixed_dictionaries(
            {"mean": st.tuples(real(), real()), "l00": positive(0.3), "l10": real(1.0),
             "l11": positive(0.3)}
        ),
    ),
    "bernoulli": (
        lambda p: dist.Bernoulli(logits=p["logits"]),
        st.fixed_dictionaries({"logits": st.one_of(st.just(0.0), real(3.0))}),
    ),
    "categorical": (
        lambda p: dist.Categorical(logits=p["logits"]),
        st.fixed_dictionaries({"logits": st.tuples(real(), real(), real())}),
    ),
    "poisson": (
        lambda p: dist.Poisson(p["rate"]),
        st.fixed_dictionaries({"rate": positive(0.3, 8.0)}),
    ),
    "gamma": (
        lambda p: dist.Gamma(p["concentration"], p["rate"]),
        st.fixed_dictionaries({"concentration": positive(0.5, 5.0), "rate": positive(0.3, 3.0)}),
    ),
    "exponential": (
        lambda p: dist.Exponential(p["rate"]),
        st.fixed_dictionaries({"rate": positive(0.3, 3.0)}),
    ),
    "binomial": (
        lambda p: dist.Binomial(7, logits=p["logits"]),
        st.fixed_dictionaries({"logits": st.one_of(st.just(0.0), real(2.0))}),
    ),
}


def _as_arrays(params):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params,
                        is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_expected_score_is_zero(family):
    dist_fn, strategy = FAMILIES[family]

    @jax.jit
    def mean_and_se(params, key):
        x = scorefn.sample(dist_fn, params, key, NUM_SAMPLES)
        flat = jax.vmap(lambda g: ravel_pytree(g)[0])(scorefn.per_sample_scores(dist_fn, params, x))
        return flat.mean(0), flat.std(0) / jnp.sqrt(NUM_SAMPLES)

    @settings(max_examples=12, deadline=None, derandomize=True)
    @given(strategy)
    def check(raw_params):
        params = _as_arrays(raw_params)
        mean, se = (np.asarray(a, np.float64) for a in mean_and_se(params, jax.random.key(7)))
        z = mean / np.maximum(se, 1e-12)
        assert np.all(np.abs(z) < Z_MAX), f"E[score] != 0 at {raw_params}: z = {np.round(z, 2)}"

    check()


@pytest.mark.parametrize("logits, value", [(0.0, 0.0), (0.0, 1.0), (0.4, 1.0), (-1.2, 0.0)])
def test_bernoulli_logits_score_is_right_at_zero(logits, value):
    """numpyro 0.22 gets ∂ log p/∂l wrong at l = 0 exactly; scorefn's log_prob must not."""
    g = jax.grad(lambda lg: patched_log_prob(dist.Bernoulli(logits=lg), value))(logits)
    assert float(g) == pytest.approx(value - float(jax.nn.sigmoid(logits)), abs=1e-6)
    lp = patched_log_prob(dist.Bernoulli(logits=logits), value)
    assert float(lp) == pytest.approx(float(dist.Bernoulli(logits=logits).log_prob(value)))


def test_binomial_and_wrapped_bernoulli_scores_are_right_at_zero():
    g = jax.grad(lambda lg: patched_log_prob(dist.Binomial(5, logits=lg), 2.0))(0.0)
    assert float(g) == pytest.approx(2.0 - 5 * 0.5)
    wrapped = jax.grad(
        lambda lg: patched_log_prob(dist.Bernoulli(logits=lg).expand((3,)).to_event(1),
                                   jnp.array([1.0, 0.0, 1.0]))
    )(0.0)
    assert float(wrapped) == pytest.approx(2 - 3 * 0.5)


def test_joint_log_prob_sums_the_batch(key):
    d = dist.Normal(jnp.zeros((2, 3)), 1.0)
    x = d.sample(key, (4,))
    np.testing.assert_allclose(scorefn.joint_log_prob(d, x), d.log_prob(x).sum((1, 2)), rtol=1e-6)
