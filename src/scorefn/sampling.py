"""Drawing samples from a parameterised distribution: step one of the three-step split."""

from __future__ import annotations

from typing import Any

import jax

from scorefn.types import DistFn
from scorefn.validation import check_int, check_key


def sample(dist_fn: DistFn, params: Any, key: jax.Array, num_samples: int) -> jax.Array:
    """Draw ``num_samples`` samples x ~ p_θ with θ = ``params``, as constants.

    Returns an array of shape ``(num_samples, *batch_shape, *event_shape)``. Gradients are
    stopped: the score-function estimator treats samples as data and differentiates only
    ``log p_θ(x)``; ``f`` can then be evaluated anywhere (a jitted function, a Python
    simulator, a remote worker) before ``scorefn.score_grad`` is called.
    """
    check_key(key)
    num_samples = check_int(num_samples, "num_samples")
    return jax.lax.stop_gradient(dist_fn(params).sample(key, (num_samples,)))
