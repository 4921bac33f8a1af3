"""A conjugate model with a closed-form ELBO, shared by the VI tests.

z_d ~ N(0, 1), x_d | z_d ~ N(z_d, τ²), d = 1..3 (a plate), guide q(z_d) = N(m_d, softplus(ρ_d)²):

    L = Σ_d [ -log 2π - log τ - ½(m_d² + s_d²) - ((x_d - m_d)² + s_d²)/(2τ²) + ½ log(2πe s_d²) ]
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from scorefn import vi

TAU = 0.5
X = jnp.array([0.3, -1.2, 2.0])
PARAMS = {"z": {"loc": jnp.array([0.1, -0.5, 0.8]), "scale": jnp.array([-0.3, 0.2, -1.0])}}


def normal_normal(x):
    with numpyro.plate("dims", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, TAU), obs=x)


def closed_form_elbo(params):
    m = params["z"]["loc"]
    s = jax.nn.softplus(params["z"]["scale"])
    prior = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * (m**2 + s**2)
    likelihood = -0.5 * jnp.log(2 * jnp.pi) - jnp.log(TAU) - ((X - m) ** 2 + s**2) / (2 * TAU**2)
    entropy = 0.5 * jnp.log(2 * jnp.pi * jnp.e * s**2)
    return jnp.sum(prior + likelihood + entropy)


def repeated_grads(model, guide, params, key, num_repeats, **options):
    """``num_repeats`` independent gradient estimates, flattened: (R, P) float64."""
    from jax.flatten_util import ravel_pytree

    def one(k):
        return ravel_pytree(vi.elbo_grad(model, guide, params, k, **options).grad)[0]

    keys = jax.random.split(key, num_repeats)
    return np.asarray(jax.jit(lambda ks: jax.lax.map(one, ks))(keys), np.float64)
