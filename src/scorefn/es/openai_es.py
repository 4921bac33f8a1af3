r"""OpenAI-ES (Salimans et al. 2017): an isotropic Gaussian N(μ, σ² I) moved by any optax optimiser.

Mirrored samples x = μ ± σ ε, centered-rank utilities u, and the search gradient

$$
\nabla_\mu \mathbb{E}[u] \approx \frac{1}{\lambda}\sum_k u_k\, (x_k - \mu) / \sigma^2 \qquad
  (\texttt{scorefn.score\_grad})
$$

preconditioned by the isotropic Fisher I = 1/σ² (``scorefn.fisher.elementwise_fisher``),
i.e. (1/λ) Σ_k u_k σ ε_k, then handed (negated: optax minimises) to the optimiser, with optional
L2 weight decay. σ follows ``sigma0 · sigma_decay^t`` down to ``sigma_min``. Suited to many
parameters and noisy objectives (policies); not a high-precision optimiser.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax

from scorefn import fisher
from scorefn.es.fitness_shaping import centered_ranks
from scorefn.es.noise import standard_normal
from scorefn.es.strategy import NES, check_options
from scorefn.estimators import score_grad


class OpenAIESState(NamedTuple):
    mean: jax.Array
    sigma: jax.Array
    opt_state: Any
    key: jax.Array
    generation: jax.Array


@dataclasses.dataclass(frozen=True)
class OpenAIES(NES):
    """Ask/tell OpenAI-ES. ``optimizer`` defaults to ``optax.adam(learning_rate)``."""

    popsize: int = 50
    learning_rate: Any = 0.05
    optimizer: Any = None
    weight_decay: float = 0.0
    sigma_decay: float = 1.0
    sigma_min: float = 0.0
    name: str = "openai_es"

    def __post_init__(self):
        if self.popsize < 2 or self.popsize % 2:
            raise ValueError(f"popsize must be even (mirrored sampling) and >= 2, got {self.popsize}")
        check_options(self, positive=("sigma_decay",), nonnegative=("weight_decay", "sigma_min"))
        if not callable(self.learning_rate):  # else an optax schedule
            check_options(self, positive=("learning_rate",))

    def _tx(self) -> optax.GradientTransformation:
        optimizer = self.optimizer or optax.adam(self.learning_rate)
        if self.weight_decay:
            return optax.chain(optax.add_decayed_weights(self.weight_decay), optimizer)
        return optimizer

    def init(self, key: jax.Array, x0: jax.Array, sigma0: float = 1.0) -> OpenAIESState:
        x0 = jnp.asarray(x0, jnp.result_type(float))
        return OpenAIESState(x0, jnp.asarray(sigma0, x0.dtype), self._tx().init(x0), key,
                             jnp.zeros((), jnp.int32))

    def mean(self, state: OpenAIESState) -> jax.Array:
        return state.mean

    def ask(self, state: OpenAIESState) -> tuple[jax.Array, OpenAIESState]:
        key, sub = jax.random.split(state.key)
        eps = standard_normal(sub, self.popsize, state.mean.shape[0], state.mean.dtype,
                              mirrored=True)
        return state.mean + state.sigma * eps, state._replace(key=key)

    def _dist_fn(self, sigma):
        return lambda params: dist.Normal(params["loc"], sigma)

    def search_gradient(self, state: OpenAIESState, x: jax.Array, values: jax.Array, *,
                        runtime_checks: bool = True) -> dict:
        """(1/λ) Σ_k values_k ∇μ log p(x_k), by the score function."""
        return score_grad(self._dist_fn(state.sigma), {"loc": state.mean}, x, values,
                          validate=False, runtime_checks=runtime_checks)

    def natural_gradient(self, state: OpenAIESState, grad: dict) -> dict:
        blocks = fisher.elementwise_fisher(self._dist_fn(state.sigma), {"loc": state.mean})
        return fisher.natural_gradient_elementwise(blocks, grad)

    def tell(self, state: OpenAIESState, x: jax.Array, fitness: jax.Array) -> OpenAIESState:
        nat = self.natural_search_gradient(state, x, centered_ranks(fitness))
        updates, opt_state = self._tx().update(-nat["loc"], state.opt_state, state.mean)
        sigma = jnp.maximum(state.sigma * self.sigma_decay, self.sigma_min)
        return state._replace(mean=optax.apply_updates(state.mean, updates), sigma=sigma,
                              opt_state=opt_state, generation=state.generation + 1)

    def scale(self, state: OpenAIESState) -> jax.Array:
        return state.sigma

    def with_popsize(self, popsize: int) -> OpenAIES:
        """Rounded up to an even number: the samples come in mirrored pairs."""
        return dataclasses.replace(self, popsize=popsize + popsize % 2)


def openai_es(**options: Any) -> OpenAIES:
    """The OpenAI-ES strategy; see ``OpenAIES``."""
    return OpenAIES(**options)
