r"""Natural-gradient search over binary strings with independent Bernoulli(σ(θ)) bits.

The search gradient is Σ_k u_k (x_k - p) in the logits and the Fisher is p(1 - p) per bit,
so the natural gradient is Σ_k u_k (x_k - p) / (p(1 - p)) (see ``scorefn.es.discrete``).
For combinatorial objectives (OneMax, MaxCut) where nothing else in the library applies.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from scorefn.es.discrete import LogitsSearch, LogitsState


def _bernoulli(logits: jax.Array) -> dist.Distribution:
    return dist.Bernoulli(logits=logits)


@dataclasses.dataclass(frozen=True)
class BernoulliNES(LogitsSearch):
    """Ask/tell natural-gradient search over {0, 1}^d."""

    name: str = "bernoulli"
    distribution: Any = dataclasses.field(default=_bernoulli, repr=False, compare=False)

    def init(self, key: jax.Array, x0: jax.Array, sigma0: float = 1.0) -> LogitsState:
        """``x0`` gives the initial probabilities of a 1 (0.5 everywhere is usual)."""
        p0 = jnp.clip(jnp.asarray(x0, jnp.result_type(float)), 1e-3, 1 - 1e-3)
        return LogitsState(jnp.log(p0) - jnp.log1p(-p0), key, jnp.zeros((), jnp.int32))

    def mean(self, state: LogitsState) -> jax.Array:
        return (state.logits > 0).astype(state.logits.dtype)

    def scale(self, state: LogitsState) -> jax.Array:
        p = jax.nn.sigmoid(state.logits)
        return jnp.max(jnp.minimum(p, 1 - p))


def bernoulli(**options: Any) -> BernoulliNES:
    """The binary strategy; see ``BernoulliNES``."""
    return BernoulliNES(**options)
