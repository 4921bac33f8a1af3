"""Standard test functions (to minimise), as JAX functions of one point x of shape (d,)."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp


def sphere(x):
    return jnp.sum(x**2)


def ellipsoid(x, condition: float = 1e6):
    """Σ_i condition^(i/(d-1)) x_i²."""
    d = x.shape[0]
    weights = condition ** (jnp.arange(d) / max(d - 1, 1))
    return jnp.sum(weights * x**2)


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rastrigin(x):
    return 10.0 * x.shape[0] + jnp.sum(x**2 - 10.0 * jnp.cos(2 * jnp.pi * x))


def ackley(x):
    d = x.shape[0]
    return (-20.0 * jnp.exp(-0.2 * jnp.sqrt(jnp.sum(x**2) / d))
            - jnp.exp(jnp.sum(jnp.cos(2 * jnp.pi * x)) / d) + 20.0 + jnp.e)


def onemax(x):
    """Binary: d minus the number of ones; 0 at the all-ones string."""
    return x.shape[0] - jnp.sum(x)


def maxcut(weights) -> Callable:
    """MaxCut on a weighted graph (symmetric ``weights``, zero diagonal), as a function of a
    0/1 labelling x to minimise: total weight minus the weight of the edges cut."""
    weights = jnp.asarray(weights)
    total = jnp.sum(jnp.triu(weights, 1))

    def f(x):
        cut = jnp.sum(jnp.triu(weights, 1) * (x[:, None] != x[None, :]))
        return total - cut

    return f


def cycle_maxcut(x):
    """MaxCut on the cycle graph over d nodes (unit weights): 0 at an alternating labelling
    when d is even. d minus the number of cut edges."""
    return x.shape[0] - jnp.sum(x != jnp.roll(x, 1))


FUNCTIONS: dict[str, tuple[Callable, bool]] = {  # name: (f, binary)
    "sphere": (sphere, False),
    "ellipsoid": (ellipsoid, False),
    "rosenbrock": (rosenbrock, False),
    "rastrigin": (rastrigin, False),
    "ackley": (ackley, False),
    "onemax": (onemax, True),
    "maxcut": (cycle_maxcut, True),
}
