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
        return _normal_in_memory(key, (popsize, dim), dtype)
    half = popsize // 2
    eps = _normal_in_memory(key, (popsize - half, dim), dtype)
    return jnp.concatenate([eps[:half], -eps[:half], eps[half:]])


def _normal_in_memory(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, computed once and kept in memory.

    XLA's CPU compiler fuses the inverse-erf tail of the normal sampler into every consumer
    of the draws (f at the candidates, each sum of the search gradient, the best candidate),
    so a generation computed it three times over; ``lax.optimization_barrier`` does not stop
    this on CPU (it is expanded before fusion). A conditional is a fusion boundary, and both
    branches draw the same numbers, so the result is exactly ``jax.random.normal``'s.
    Measured (BENCHMARKS.md): SNES at d = 10000, 6.5 -> 4.1 ms per generation.
    """
    def draw(k):
        return jax.random.normal(k, shape, dtype)

    any_runtime_bit = jax.random.key_data(key).ravel()[0] % 2 == 0
    return jax.lax.cond(any_runtime_bit, draw, draw, key)
