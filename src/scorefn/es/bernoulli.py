r"""Natural-gradient search over binary strings with independent Bernoulli(σ(θ)) bits.

The search gradient of E[u] is the score-function estimate Σ_k u_k (x_k - p) in the logits
(:func:`scorefn.score_grad`); the Fisher is diagonal, p(1 - p) per bit
(:func:`scorefn.fisher.elementwise_fisher`, exact by enumeration), so the natural gradient is
Σ_k u_k (x_k - p) / (p(1 - p)). Logits are kept in [-max_logit, max_logit] so that no bit
freezes for good. For combinatorial objectives (OneMax, MaxCut) where nothing else applies.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from scorefn import fisher
from scorefn.es.fitness_shaping import nes_utilities
from scorefn.estimators import score_grad


class BernoulliState(NamedTuple):
    logits: jax.Array
    key: jax.Array
    generation: jax.Array


def search_distribution(params: dict) -> dist.Distribution:
    return dist.Bernoulli(logits=params["logits"])


@dataclasses.dataclass(frozen=True)
class BernoulliNES:
    """Ask/tell natural-gradient search over {0, 1}^d."""

    popsize: int | None = None
    learning_rate: float = 0.1
    max_logit: float = 5.0
    damping: float = 1e-3
    name: str = "bernoulli"

    def init(self, key: jax.Array, x0: jax.Array, sigma0: float = 1.0) -> BernoulliState:
        """``x0`` gives the initial probabilities of a 1 (0.5 everywhere is usual)."""
        p0 = jnp.clip(jnp.asarray(x0, jnp.result_type(float)), 1e-3, 1 - 1e-3)
        return BernoulliState(jnp.log(p0) - jnp.log1p(-p0), key, jnp.zeros((), jnp.int32))

    def mean(self, state: BernoulliState) -> jax.Array:
        return (state.logits > 0).astype(state.logits.dtype)

    def ask(self, state: BernoulliState) -> tuple[jax.Array, BernoulliState]:
        d = state.logits.shape[0]
        popsize = self.popsize or 4 + int(3 * math.log(d))
        key, sub = jax.random.split(state.key)
        x = dist.Bernoulli(logits=state.logits).sample(sub, (popsize,)).astype(state.logits.dtype)
        return x, state._replace(key=key)

    def search_gradient(self, state: BernoulliState, x: jax.Array, values: jax.Array) -> dict:
        return score_grad(search_distribution, {"logits": state.logits}, x, values * x.shape[0],
                          validate=False)

    def natural_gradient(self, state: BernoulliState, grad: dict) -> dict:
        blocks = fisher.elementwise_fisher(search_distribution, {"logits": state.logits})
        return fisher.natural_gradient_elementwise(blocks, grad, self.damping)

    def tell(self, state: BernoulliState, x: jax.Array, fitness: jax.Array) -> BernoulliState:
        nat = self.natural_gradient(state, self.search_gradient(state, x, nes_utilities(fitness)))
        logits = jnp.clip(state.logits + self.learning_rate * nat["logits"], -self.max_logit,
                          self.max_logit)
        return state._replace(logits=logits, generation=state.generation + 1)

    def scale(self, state: BernoulliState) -> jax.Array:
        p = jax.nn.sigmoid(state.logits)
        return jnp.max(jnp.minimum(p, 1 - p))


def bernoulli(**options: Any) -> BernoulliNES:
    """The binary strategy; see :class:`BernoulliNES`."""
    return BernoulliNES(**options)
