r"""Natural-gradient search over strings of categorical variables, x_i ∈ {0, ..., K-1}.

Each position is an independent Categorical(softmax(θ_i)); the search gradient is
Σ_k u_k (onehot(x_k,i) - p_i) per position and its Fisher diag(p_i) - p_i p_iᵀ (exact by
enumeration) is singular along the all-ones direction, so the solve is damped and the logits
are centred (see ``scorefn.es.discrete``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from scorefn.es.discrete import LogitsSearch, LogitsState


def _categorical(logits: jax.Array) -> dist.Distribution:
    return dist.Categorical(logits=logits)


def search_distribution(params: dict) -> dist.Distribution:
    return _categorical(params["logits"])


@dataclasses.dataclass(frozen=True)
class CategoricalNES(LogitsSearch):
    """Ask/tell natural-gradient search over {0..K-1}^d (candidates come back as floats)."""

    num_categories: int = 2
    damping: float = 1e-2
    name: str = "categorical"
    distribution: Any = dataclasses.field(default=_categorical, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if self.num_categories < 2:
            raise ValueError(f"num_categories must be >= 2, got {self.num_categories}")

    def init(self, key: jax.Array, x0: jax.Array, sigma0: float = 1.0) -> LogitsState:
        """Starts uniform over the categories; ``x0`` only gives the length d."""
        d = jnp.shape(x0)[0]
        return LogitsState(jnp.zeros((d, self.num_categories), jnp.result_type(float)), key,
                           jnp.zeros((), jnp.int32))

    def mean(self, state: LogitsState) -> jax.Array:
        return jnp.argmax(state.logits, axis=-1).astype(state.logits.dtype)

    def as_samples(self, x: jax.Array) -> jax.Array:
        return x.astype(jnp.int32)

    def normalise(self, logits: jax.Array) -> jax.Array:
        return logits - jnp.mean(logits, axis=-1, keepdims=True)  # softmax is shift-invariant

    def scale(self, state: LogitsState) -> jax.Array:
        p = jax.nn.softmax(state.logits, axis=-1)
        return jnp.max(1.0 - jnp.max(p, axis=-1))


def categorical(**options: Any) -> CategoricalNES:
    """The categorical strategy; see ``CategoricalNES``."""
    return CategoricalNES(**options)
