r"""Natural-gradient search over strings of categorical variables, x_i ∈ {0, ..., K-1}.

Each position is an independent Categorical(softmax(θ_i)). The search gradient of E[u] is
the score-function estimate Σ_k u_k (onehot(x_k,i) - p_i) per position
(:func:`scorefn.score_grad`); the Fisher of each position is diag(p_i) - p_i p_iᵀ, exact by
enumeration (:func:`scorefn.fisher.elementwise_fisher`), singular along the all-ones
direction, so the solve is damped. Logits are centred and kept in [-max_logit, max_logit].
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


class CategoricalState(NamedTuple):
    logits: jax.Array  # (d, K)
    key: jax.Array
    generation: jax.Array


def search_distribution(params: dict) -> dist.Distribution:
    return dist.Categorical(logits=params["logits"])


@dataclasses.dataclass(frozen=True)
class CategoricalNES:
    """Ask/tell natural-gradient search over {0..K-1}^d (candidates come back as floats)."""

    num_categories: int = 2
    popsize: int | None = None
    learning_rate: float = 0.1
    max_logit: float = 5.0
    damping: float = 1e-2
    name: str = "categorical"

    def __post_init__(self):
        if self.num_categories < 2:
            raise ValueError(f"num_categories must be >= 2, got {self.num_categories}")

    def init(self, key: jax.Array, x0: jax.Array, sigma0: float = 1.0) -> CategoricalState:
        """Starts uniform over the categories; ``x0`` only gives the length d."""
        d = jnp.shape(x0)[0]
        return CategoricalState(jnp.zeros((d, self.num_categories), jnp.result_type(float)), key,
                                jnp.zeros((), jnp.int32))

    def mean(self, state: CategoricalState) -> jax.Array:
        return jnp.argmax(state.logits, axis=-1).astype(state.logits.dtype)

    def ask(self, state: CategoricalState) -> tuple[jax.Array, CategoricalState]:
        d = state.logits.shape[0]
        popsize = self.popsize or 4 + int(3 * math.log(d * self.num_categories))
        key, sub = jax.random.split(state.key)
        x = dist.Categorical(logits=state.logits).sample(sub, (popsize,))
        return x.astype(state.logits.dtype), state._replace(key=key)

    def search_gradient(self, state: CategoricalState, x: jax.Array, values: jax.Array) -> dict:
        return score_grad(search_distribution, {"logits": state.logits}, x.astype(jnp.int32),
                          values * x.shape[0], validate=False)

    def natural_gradient(self, state: CategoricalState, grad: dict) -> dict:
        blocks = fisher.elementwise_fisher(search_distribution, {"logits": state.logits})
        return fisher.natural_gradient_elementwise(blocks, grad, self.damping)

    def tell(self, state: CategoricalState, x: jax.Array, fitness: jax.Array) -> CategoricalState:
        nat = self.natural_gradient(state, self.search_gradient(state, x, nes_utilities(fitness)))
        logits = state.logits + self.learning_rate * nat["logits"]
        logits = logits - jnp.mean(logits, axis=-1, keepdims=True)  # softmax is shift-invariant
        logits = jnp.clip(logits, -self.max_logit, self.max_logit)
        return state._replace(logits=logits, generation=state.generation + 1)

    def scale(self, state: CategoricalState) -> jax.Array:
        p = jax.nn.softmax(state.logits, axis=-1)
        return jnp.max(1.0 - jnp.max(p, axis=-1))


def categorical(**options: Any) -> CategoricalNES:
    """The categorical strategy; see :class:`CategoricalNES`."""
    return CategoricalNES(**options)
