"""Stochastic programs with closed-form objectives J(θ), shared by tests/scorefn/programs.

The closed forms are written in JAX, so ∇J and ∇²J come from autodiff of the exact J.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree

import scorefn

TARGET = 1.5
REWARDS = jnp.array([1.0, -2.0, 0.5])
SHIFT = jnp.array([1.0, -0.5, 0.0])


def three_site(p):
    """b ~ Bernoulli(σ(a)); y | b ~ Normal(m_b, e^s); c | b ~ Categorical(l + b·shift).

    Terms: -(y - 1.5)² (reads y, so b through y's distribution), 2b (reads b), r[c] (reads c,
    so b), and -0.1 Σ m² (θ directly).
    """
    b = numpyro.sample("b", dist.Bernoulli(logits=p["a"]))
    y = numpyro.sample("y", dist.Normal(p["m"][b.astype(jnp.int32)], jnp.exp(p["s"])))
    c = numpyro.sample("c", dist.Categorical(logits=p["l"] + b * SHIFT))
    numpyro.factor("fit", -((y - TARGET) ** 2))
    numpyro.factor("pick", 2.0 * b)
    numpyro.factor("reward", REWARDS[c])
    numpyro.factor("reg", -0.1 * jnp.sum(p["m"] ** 2))


def three_site_objective(p):
    pb = jax.nn.sigmoid(p["a"])
    total = -0.1 * jnp.sum(p["m"] ** 2)
    for b, prob in ((0, 1 - pb), (1, pb)):
        fit = -((p["m"][b] - TARGET) ** 2 + jnp.exp(2 * p["s"]))
        reward = jnp.sum(jax.nn.softmax(p["l"] + b * SHIFT) * REWARDS)
        total = total + prob * (fit + 2.0 * b + reward)
    return total


THREE_SITE_PARAMS = {
    "a": jnp.array(0.3),
    "m": jnp.array([-0.5, 1.0]),
    "s": jnp.array(-0.2),
    "l": jnp.array([0.2, -0.1, 0.4]),
}


def plated(p):
    """g ~ Normal(μ, 1) outside the plate; z_i ~ Bernoulli(σ(a_i)) inside a plate of 6;
    term_i = r_i z_i + w_i g, inside the plate: J = Σ σ(a_i) r_i + μ Σ w_i."""
    g = numpyro.sample("g", dist.Normal(p["mu"], 1.0))
    with numpyro.plate("i", 6):
        z = numpyro.sample("z", dist.Bernoulli(logits=p["a"]))
        numpyro.factor("t", PLATE_R * z + PLATE_W * g)


PLATE_R = jnp.array([1.0, -1.0, 2.0, 0.5, -0.5, 1.5])
PLATE_W = jnp.array([0.3, -0.2, 0.1, 0.4, 0.0, -0.3])
PLATED_PARAMS = {"mu": jnp.array(0.4), "a": jnp.linspace(-1.0, 1.0, 6)}


def plated_objective(p):
    return jnp.sum(jax.nn.sigmoid(p["a"]) * PLATE_R) + p["mu"] * jnp.sum(PLATE_W)


def repeated_grads(program, params, key, num_repeats, *args, **options) -> np.ndarray:
    """``num_repeats`` independent gradient estimates, flattened: (R, P) float64."""

    def one(k):
        return ravel_pytree(scorefn.programs.grad(program, params, k, *args, **options))[0]

    out = jax.jit(lambda ks: jax.lax.map(one, ks))(jax.random.split(key, num_repeats))
    return np.asarray(out, np.float64)

