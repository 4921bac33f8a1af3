"""Log-probabilities and per-sample scores g(x) = ∇θ log p_θ(x) for any parameter pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from numpyro.distributions import Distribution

from scorefn._numpyro_fixes import log_prob as _log_prob
from scorefn.types import DistFn


def log_prob(d: Distribution, value: jax.Array) -> jax.Array:
    """``d.log_prob(value)``, one number per factor (the batch shape), with the gradient of
    numpyro's Bernoulli/Binomial logits-at-zero kink corrected (``scorefn/_numpyro_fixes.py``,
    which every log-probability in scorefn goes through)."""
    return _log_prob(d, value)


def per_sample_sum(array: jax.Array) -> jax.Array:
    """Sum over every axis but the first: ``(N, *batch_shape) -> (N,)``, the per-sample total
    of per-factor log-probabilities (a product of independent factors)."""
    return array.reshape(array.shape[0], -1).sum(-1)


def joint_log_prob(d: Distribution, samples: jax.Array) -> jax.Array:
    """log p(x_n) summed over the batch dimensions: shape ``(N,)`` for N samples.

    A batched distribution (say ``Normal(loc, scale)`` with ``loc.shape == (d,)``) is the
    product of its independent factors, so the log density of one sample is the sum.
    """
    return per_sample_sum(_log_prob(d, samples))


def per_sample_scores(dist_fn: DistFn, params: Any, samples: jax.Array) -> Any:
    """Scores g_n = ∇θ log p_θ(x_n), one per sample.

    Returns a pytree shaped like ``params`` with a leading axis of length N. Computed as a
    ``vmap`` of ``grad`` (one reverse pass per sample, batched), never materialising more
    than N × P numbers. E_p[g] = 0 for every regular family, which the tests check.
    """

    def log_prob_one(p, x):
        return _log_prob(dist_fn(p), x).sum()

    return jax.vmap(jax.grad(log_prob_one), in_axes=(None, 0))(params, samples)


def scores_and_log_prob(dist_fn: DistFn, params: Any, samples: jax.Array) -> tuple[Any, jax.Array]:
    """Per-sample scores (as ``per_sample_scores``) and log p_θ(x_n), shape ``(N,)``."""

    def log_prob_one(p, x):
        return _log_prob(dist_fn(p), x).sum()

    log_prob, scores = jax.vmap(jax.value_and_grad(log_prob_one), in_axes=(None, 0))(
        params, samples
    )
    return scores, log_prob


def flatten_per_sample(tree: Any) -> jax.Array:
    """Stack a per-sample pytree (leading axis N) into an (N, P) matrix in ravel_pytree order."""
    leaves = jax.tree.leaves(tree)
    n = leaves[0].shape[0]
    return jnp.concatenate([leaf.reshape(n, -1) for leaf in leaves], axis=1)
