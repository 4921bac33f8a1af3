"""divergences.kl_estimate: expectations under p by enumeration of a categorical."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn.divergences import kl_estimate

P = jnp.array([0.5, 0.3, 0.15, 0.05])
Q = jnp.array([0.25, 0.25, 0.3, 0.2])
KL = float(jnp.sum(P * jnp.log(P / Q)))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_estimators_average_to_the_kl(estimator):
    values = kl_estimate(jnp.log(P), jnp.log(Q), estimator)
    assert float(jnp.sum(P * values)) == pytest.approx(KL, rel=1e-6)


def test_k2_is_second_order_and_k3_nonnegative():
    k2 = float(jnp.sum(P * kl_estimate(jnp.log(P), jnp.log(Q), "k2")))
    assert k2 != pytest.approx(KL, rel=1e-2)  # not KL: exact only to second order in p − q
    near = P * jnp.exp(0.01 * jnp.array([1.0, -1.0, 0.5, -0.5]))
    near = near / near.sum()
    exact = float(jnp.sum(P * jnp.log(P / near)))
    k2_near = float(jnp.sum(P * kl_estimate(jnp.log(P), jnp.log(near), "k2")))
    assert k2_near == pytest.approx(exact, rel=2e-2)
    ratios = jnp.linspace(-5, 5, 101)
    assert np.all(np.asarray(kl_estimate(jnp.zeros(101), ratios, "k3")) >= 0)


def test_gradient_of_k3_in_log_p():
    g = jax.grad(lambda lp: kl_estimate(lp, jnp.log(0.2), "k3"))(jnp.log(0.5))
    assert float(g) == pytest.approx(1 - 0.2 / 0.5)


def test_unknown_estimator():
    with pytest.raises(ValueError, match="estimator must be one of"):
        kl_estimate(jnp.zeros(2), jnp.zeros(2), "k4")
