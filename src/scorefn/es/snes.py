r"""SNES: separable natural evolution strategies (Schaul, Glasmachers & Schmidhuber 2011).

Search distribution N(μ, diag σ²) with parameters θ = (μ, log σ). With rank utilities u_k
(``scorefn.es.fitness_shaping.nes_utilities``) the search gradient is the score-function
estimate ∇θ E[u] ≈ Σ_k u_k ∇θ log p_θ(x_k) (``scorefn.score_grad``), and the natural
gradient divides by the Fisher, which is diagonal here, diag(1/σ², 2) (in closed form,
``scorefn.fisher.diagonal_gaussian_natural_gradient``; the tests check it against the
KL-Hessian blocks of ``scorefn.fisher.elementwise_fisher``):

$$
\mu \leftarrow \mu + \eta_\mu \sigma \sum_k u_k s_k, \qquad \sigma \leftarrow \sigma
  \exp\Big(\frac{\eta_\sigma}{2} \sum_k u_k (s_k^2 - 1)\Big), \qquad s_k = (x_k - \mu)/\sigma.
$$

Defaults (Wierstra et al. 2014, table 1): λ = 4 + ⌊3 ln d⌋, η_μ = 1, η_σ = (3 + ln d)/(5√d).

A diagonal Gaussian cannot turn into a curved valley that runs across the axes, such as
rosenbrock's (near its minimum the valley points along (1, 2, 4, …, 2^{d-1})). There the
rank utilities favour the shortest steps, and with the default η_σ the scales shrink faster
than the mean moves along the valley: at d = 10 SNES is still at f ≈ 2e-4 to 3e-2 after 2·10⁵
evaluations, as evosax's SNES is. A slow scale rate, ``SNES(lr_scale=0.01, mirrored=True)``,
reaches 1e-8 there in about 10⁵ evaluations, but needs about 30 times the default's
evaluations on sphere and ellipsoid (see BENCHMARKS.md).
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
from scorefn.es.noise import standard_normal
from scorefn.es.strategy import NES, check_options
from scorefn.estimators import score_grad


class SNESState(NamedTuple):
    mean: jax.Array
    log_scale: jax.Array
    key: jax.Array
    generation: jax.Array


def search_distribution(params: dict) -> dist.Distribution:
    return dist.Normal(params["loc"], jnp.exp(params["log_scale"]))


@dataclasses.dataclass(frozen=True)
class SNES(NES):
    """Ask/tell SNES. ``popsize``, ``lr_mean`` and ``lr_scale`` default to the standard values.

    ``mirrored=True`` draws the population in pairs μ ± σ ⊙ ε (``scorefn.es.noise``):
    half the normal draws, which dominate a generation's time at large d, for about the same
    number of evaluations on sphere and ellipsoid (see BENCHMARKS.md).
    """

    popsize: int | None = None
    lr_mean: float = 1.0
    lr_scale: float | None = None
    mirrored: bool = False
    name: str = "snes"

    def __post_init__(self):
        check_options(self, positive=("lr_mean", "lr_scale"))

    def sizes(self, dim: int) -> tuple[int, float, float]:
        popsize = self.popsize or 4 + int(3 * math.log(dim))
        lr_scale = self.lr_scale if self.lr_scale is not None else (3 + math.log(dim)) / (5 * math.sqrt(dim))
        return popsize, self.lr_mean, lr_scale

    def init(self, key: jax.Array, x0: jax.Array, sigma0: float = 1.0) -> SNESState:
        x0 = jnp.asarray(x0, jnp.result_type(float))
        return SNESState(x0, jnp.full_like(x0, math.log(sigma0)), key, jnp.zeros((), jnp.int32))

    def mean(self, state: SNESState) -> jax.Array:
        return state.mean

    def ask(self, state: SNESState) -> tuple[jax.Array, SNESState]:
        popsize, _, _ = self.sizes(state.mean.shape[0])
        key, sub = jax.random.split(state.key)
        eps = standard_normal(sub, popsize, state.mean.shape[0], state.mean.dtype, self.mirrored)
        x = state.mean + jnp.exp(state.log_scale) * eps
        return x, state._replace(key=key)

    def search_gradient(self, state: SNESState, x: jax.Array, values: jax.Array, *,
                        runtime_checks: bool = True) -> dict:
        """Σ_k values_k ∇θ log p_θ(x_k) for θ = (loc, log_scale), by the score function."""
        params = {"loc": state.mean, "log_scale": state.log_scale}
        return score_grad(search_distribution, params, x, values * x.shape[0], validate=False,
                          runtime_checks=runtime_checks)

    def natural_gradient(self, state: SNESState, grad: dict) -> dict:
        loc, log_scale = fisher.diagonal_gaussian_natural_gradient(
            grad["loc"], grad["log_scale"], state.log_scale)
        return {"loc": loc, "log_scale": log_scale}

    def tell(self, state: SNESState, x: jax.Array, fitness: jax.Array) -> SNESState:
        _, lr_mean, lr_scale = self.sizes(state.mean.shape[0])
        nat = self.natural_search_gradient(state, x, nes_utilities(fitness))
        return state._replace(
            mean=state.mean + lr_mean * nat["loc"],
            log_scale=state.log_scale + lr_scale * nat["log_scale"],
            generation=state.generation + 1,
        )

    def scale(self, state: SNESState) -> jax.Array:
        return jnp.max(jnp.exp(state.log_scale))


def snes(**options: Any) -> SNES:
    """The SNES strategy; see ``SNES``."""
    return SNES(**options)
