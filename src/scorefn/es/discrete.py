r"""The shared machinery of natural-gradient search over discrete strings.

Independent variables with logits θ (a Bernoulli per bit, a Categorical per position): the
search gradient of E[u] is the score-function estimate Σ_k u_k ∇θ log p_θ(x_k)
(``scorefn.score_grad``), preconditioned by the exact per-variable Fisher blocks from
enumeration (``scorefn.fisher.elementwise_fisher``), damped; logits stay in
[-max_logit, max_logit] so that no variable freezes for good.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from scorefn import fisher
from scorefn.es.fitness_shaping import nes_utilities
from scorefn.es.strategy import NES, check_options
from scorefn.estimators import score_grad


class LogitsState(NamedTuple):
    logits: jax.Array
    key: jax.Array
    generation: jax.Array


@dataclasses.dataclass(frozen=True)
class LogitsSearch(NES):
    """Base class: subclasses set ``distribution`` (logits -> numpyro Distribution)."""

    popsize: int | None = None
    learning_rate: float = 0.1
    max_logit: float = 5.0
    damping: float = 1e-3
    name: str = "discrete"

    distribution: Callable[[jax.Array], dist.Distribution] = dataclasses.field(
        default=None, repr=False, compare=False)

    def __post_init__(self):
        check_options(self, positive=("learning_rate", "max_logit"), nonnegative=("damping",))

    def default_popsize(self, logits: jax.Array) -> int:
        """4 + ⌊3 ln n⌋ for n logits (d bits, or d positions × K categories)."""
        return 4 + int(math.log(logits.size) * 3)

    def search_distribution(self, params: dict) -> dist.Distribution:
        return self.distribution(params["logits"])

    def ask(self, state: LogitsState) -> tuple[jax.Array, LogitsState]:
        popsize = self.popsize or self.default_popsize(state.logits)
        key, sub = jax.random.split(state.key)
        x = self.distribution(state.logits).sample(sub, (popsize,))
        return x.astype(state.logits.dtype), state._replace(key=key)

    def search_gradient(self, state: LogitsState, x: jax.Array, values: jax.Array, *,
                        runtime_checks: bool = True) -> dict:
        """Σ_k values_k ∇θ log p_θ(x_k), by the score function."""
        return score_grad(self.search_distribution, {"logits": state.logits}, self.as_samples(x),
                          values * x.shape[0], validate=False,
                          runtime_checks=runtime_checks)

    def natural_gradient(self, state: LogitsState, grad: dict) -> dict:
        blocks = fisher.elementwise_fisher(self.search_distribution, {"logits": state.logits})
        return fisher.natural_gradient_elementwise(blocks, grad, self.damping)

    def as_samples(self, x: jax.Array) -> jax.Array:
        """Candidates as the distribution's own sample type (``ask`` returns floats)."""
        return x

    def normalise(self, logits: jax.Array) -> jax.Array:
        return logits

    def tell(self, state: LogitsState, x: jax.Array, fitness: jax.Array) -> LogitsState:
        nat = self.natural_search_gradient(state, x, nes_utilities(fitness))
        logits = self.normalise(state.logits + self.learning_rate * nat["logits"])
        logits = jnp.clip(logits, -self.max_logit, self.max_logit)
        return state._replace(logits=logits, generation=state.generation + 1)
