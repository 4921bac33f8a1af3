"""The family protocol (programs.families): one implementation per registry family, and the
tracer and the particle loop going through it alone."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import scorefn
from scorefn import registry
from scorefn.programs import families


def test_one_implementation_per_registry_family():
    assert set(families.FAMILIES) == set(registry.FAMILIES)
    for name, family in families.FAMILIES.items():
        assert family.name == name
        assert isinstance(family, families.SiteFamily)


def normal_site(theta):
    x = numpyro.sample("x", dist.Normal(theta["mu"], 1.0))
    numpyro.factor("f", x ** 2)


PARAMS = {"mu": jnp.array(0.7)}


def test_the_particle_loop_adds_the_term_its_family_gives(monkeypatch):
    """A measure-valued site's gradient is its family's term alone (the value is detached):
    a family whose term is doubled doubles the estimate, bit for bit."""
    options = dict(num_particles=4, estimators={"x": "measure_valued"})
    key = jax.random.key(0)
    g = scorefn.programs.grad(normal_site, PARAMS, key, **options)

    class Doubled(families.MeasureValued):
        def term(self, particle, site, index, relax):
            return 2 * super().term(particle, site, index, relax)

    monkeypatch.setitem(families.FAMILIES, "measure_valued", Doubled())
    doubled = scorefn.programs.grad(normal_site, PARAMS, key, **options)
    assert float(g["mu"]) != 0.0
    np.testing.assert_array_equal(np.asarray(doubled["mu"]), 2 * np.asarray(g["mu"]))


def test_the_recorder_draws_with_the_family(monkeypatch):
    """The value the program sees at an antithetic site is the family's draw: all ones
    (at logits of -3, numpyro's draw would be mostly zeros) make every particle's Σ b = 3."""
    def program(theta):
        b = numpyro.sample("b", dist.Bernoulli(logits=theta["logit"] * jnp.ones(3)))
        numpyro.factor("f", jnp.sum(b))

    class AllOnes(families.Antithetic):
        def draw(self, estimator, d, key, sample_shape, temperature):
            value, kept = super().draw(estimator, d, key, sample_shape, temperature)
            return jnp.ones_like(value), kept

    monkeypatch.setitem(families.FAMILIES, "antithetic", AllOnes())
    jitted = jax.jit(lambda theta: scorefn.programs.surrogate(
        program, theta, jax.random.key(1), num_particles=2, estimators={"b": "disarm"}))
    assert float(jitted({"logit": jnp.array(-3.0)})) == pytest.approx(3.0)


def test_a_cut_relaxed_site_is_detached():
    """Cutting a site detaches its value whatever its family: a relaxed site (its gradient
    flows through its value) contributes the whole gradient when it is the only site."""
    def program(theta):
        b = numpyro.sample("b", dist.Bernoulli(logits=theta["logit"]))
        numpyro.factor("f", 3.0 * b)

    theta = {"logit": jnp.array(0.3)}
    options = dict(num_particles=4, estimators={"b": "gumbel_softmax"})
    key = jax.random.key(2)
    full = scorefn.programs.grad(program, theta, key, **options)
    contribution = scorefn.programs.site_contributions(program, theta, key, **options)["b"]
    assert float(full["logit"]) != 0.0
    np.testing.assert_allclose(contribution["logit"], full["logit"], rtol=1e-6)
