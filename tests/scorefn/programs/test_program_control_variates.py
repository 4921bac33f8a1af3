"""Control variates on a program's score sites: unbiased against the closed form, lower
variance, a planted wrong E[h] caught, clear errors for what they cannot do."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from closed_forms import assert_unbiased, detects_bias, variance_z
from jax.flatten_util import ravel_pytree

import scorefn
from scorefn import control_variates

PARAMS = {"mu": jnp.array([0.5, -1.0, 2.0]), "shift": jnp.array(0.3)}
R = 2000


def shifted_square(params):
    """a ~ N(shift, 1) pathwise, x | a ~ N(mu + a, 1) by the score function, J = E[Σ x²]."""
    a = numpyro.sample("a", dist.Normal(params["shift"], 1.0))
    x = numpyro.sample("x", dist.Normal(params["mu"] + a, 1.0).to_event(1))
    numpyro.factor("f", jnp.sum(x**2))


def closed_form(params):
    # E[x_i²] = (mu_i + shift)² + Var(a) + 1
    return jnp.sum((params["mu"] + params["shift"]) ** 2 + 2.0)


TRUE = jax.grad(closed_form)(PARAMS)


def grads(key, cv, num_particles=8, **options):
    def one(k):
        g = scorefn.programs.grad(shifted_square, PARAMS, k, num_particles=num_particles,
                                  estimators={"x": "score"}, baselines={"x": None},
                                  control_variates=None if cv is None else {"x": cv}, **options)
        return ravel_pytree(g)[0]

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, R)), np.float64)


@pytest.mark.parametrize("cv", [
    control_variates.score(),
    control_variates.delta_method(lambda x: jnp.sum(x**2)),
    control_variates.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean)),
    control_variates.generic(lambda x: jnp.sum(x), lambda d: jnp.sum(d.mean), coefficient=0.5),
], ids=["score", "delta_method", "generic", "generic_fixed"])
def test_control_variate_is_unbiased(key, cv):
    assert_unbiased(grads(key, cv), ravel_pytree(TRUE)[0])


def test_delta_method_lowers_the_variance_through_an_upstream_pathwise_site(key):
    plain = grads(key, None)
    delta = grads(key, control_variates.delta_method(lambda x: jnp.sum(x**2)))
    assert np.all(variance_z(delta, plain) < -3)
    assert np.all(delta.var(0) < 0.1 * plain.var(0))  # f is quadratic: h is nearly f


def test_planted_wrong_expectation_is_detected(key):
    wrong = control_variates.generic(lambda x: jnp.sum(x), lambda d: 1.5 * jnp.sum(d.mean),
                                     coefficient=1.0)
    assert detects_bias(grads(key, wrong), ravel_pytree(TRUE)[0])


def test_errors_name_the_site_and_what_is_needed(key):
    cv = control_variates.score()
    with pytest.raises(ValueError, match="'a', which is not a score-function site"):
        scorefn.programs.grad(shifted_square, PARAMS, key, control_variates={"a": cv},
                              estimators={"x": "score"})
    with pytest.raises(TypeError, match=r"control_variates\['x'\] must come from"):
        scorefn.programs.grad(shifted_square, PARAMS, key, control_variates={"x": lambda x: x},
                              estimators={"x": "score"})
    with pytest.raises(ValueError, match="num_particles must be >= 2"):
        scorefn.programs.grad(shifted_square, PARAMS, key, num_particles=1,
                              estimators={"x": "score"}, control_variates={"x": cv})

    def plated(params):
        with numpyro.plate("n", 3):
            x = numpyro.sample("x", dist.Normal(params["mu"], 1.0))
        numpyro.factor("f", jnp.sum(x**2))

    with pytest.raises(ValueError, match="inside the plate.*credit_assignment=False"):
        scorefn.programs.grad(plated, {"mu": PARAMS["mu"]}, key, control_variates={"x": cv},
                              estimators={"x": "score"})
    g = scorefn.programs.grad(plated, {"mu": PARAMS["mu"]}, key, control_variates={"x": cv},
                              estimators={"x": "score"}, credit_assignment=False)
    assert np.all(np.isfinite(g["mu"]))

    def enumerated(params):
        b = numpyro.sample("b", dist.Bernoulli(0.5))
        x = numpyro.sample("x", dist.Normal(params["mu"] + b, 1.0).to_event(1))
        numpyro.factor("f", jnp.sum(x**2))

    with pytest.raises(ValueError, match="enumerated sites"):
        scorefn.programs.grad(enumerated, {"mu": PARAMS["mu"]}, key, control_variates={"x": cv},
                              estimators={"b": "enumerate", "x": "score"})
