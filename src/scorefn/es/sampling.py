"""Populations of standard normal perturbations, optionally mirrored.

Mirrored sampling (Brockhoff et al. 2010) pairs every perturbation ε with -ε. Each row is
still N(0, I), so a search gradient estimated from the rows estimates the same quantity; the
pairs cancel the odd-order noise of the mean's gradient, and only ⌈λ/2⌉ rows are drawn.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def standard_normal(key: jax.Array, popsize: int, dim: int, dtype, mirrored: bool) -> jax.Array:
    """(popsize, dim) standard normals. Mirrored: rows i and ⌊λ/2⌋ + i are ε_i and -ε_i, and
    an odd λ ends with one unpaired row."""
    if not mirrored:
        return jax.random.normal(key, (popsize, dim), dtype)
    half = popsize // 2
    eps = jax.random.normal(key, (popsize - half, dim), dtype)
    return jnp.concatenate([eps[:half], -eps[:half], eps[half:]])
