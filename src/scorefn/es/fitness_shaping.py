"""Rank-based fitness shaping: utilities that depend only on the order of the fitness values.

Both functions take fitness to *minimise* and return utilities to *maximise* (the best
candidate gets the largest), invariant to any monotone transformation of f; non-finite
fitness ranks last.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ranks(fitness: jax.Array) -> jax.Array:
    """Each candidate's rank, 0 for the lowest f (the best); NaN counts as worst."""
    fitness = jnp.where(jnp.isnan(fitness), jnp.inf, fitness)
    return jnp.argsort(jnp.argsort(fitness))


def centered_ranks(fitness: jax.Array) -> jax.Array:
    """Ranks mapped linearly to [-0.5, 0.5], best = 0.5 (Salimans et al. 2017, OpenAI-ES)."""
    n = fitness.shape[0]
    return 0.5 - ranks(fitness) / (n - 1)


def nes_utilities(fitness: jax.Array) -> jax.Array:
    r"""u_k = max(0, log(λ/2 + 1) - log k) / Σ_j max(0, log(λ/2 + 1) - log j) - 1/λ for the
    candidate of rank k (1 = best): the NES default (Wierstra et al. 2014). Sums to zero."""
    n = fitness.shape[0]
    k = jnp.arange(1, n + 1, dtype=jnp.result_type(float))
    raw = jnp.maximum(0.0, jnp.log(n / 2 + 1) - jnp.log(k))
    by_rank = raw / jnp.sum(raw) - 1.0 / n
    return by_rank[ranks(fitness)]
