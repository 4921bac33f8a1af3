r"""xNES: exponential natural evolution strategies (Glasmachers et al. 2010).

Search distribution N(μ, σ² B Bᵀ) with det B = 1. At every generation the gradient is taken in
local coordinates (δ, M) around the current distribution, N(μ + σBδ, σ² B expm(M) Bᵀ) at
δ = 0, M = 0: the score-function estimate (``scorefn.score_grad``) of ∇ E[u] there is
(Σ u_k z_k, ½ Σ u_k (z_k z_kᵀ - I)) with z_k = (σB)⁻¹(x_k - μ), and the natural gradient in
those coordinates has a closed form (``scorefn.fisher.gaussian_local_natural_gradient``),
G_δ = Σ u_k z_k, G_M = Σ u_k (z_k z_kᵀ - I). Then

    μ ← μ + η_μ σ B G_δ,    σ ← σ exp(η_σ/2 · tr(G_M)/d),    B ← B expm(η_B/2 · (G_M - tr(G_M)/d · I)).

Defaults (Wierstra et al. 2014, table 1): λ = 4 + ⌊3 ln d⌋, η_μ = 1,
η_σ = η_B = 3(3 + ln d)/(5 d √d).

Mirrored sampling (``mirrored=True``; Brockhoff et al. 2010) draws the population in pairs
μ ± σBz. Each sample is still distributed as the search distribution, so G_δ and G_M
estimate the same gradient; the symmetric pairs cut the variance of G_δ. It matters most
with adaptation sampling, whose test it steadies: alone, adaptation sampling stalls 2 in 5
runs on rosenbrock d = 10; with mirrored pairs, none in 10.

Adaptation sampling (``adaptation_sampling=True``; Wierstra et al. 2014, section 3.2.2) adapts
η_σ online. The last σ update made again with 1.5 η_σ gives a hypothetical σ' =
σ √(σ/σ_prev); the current samples, importance-weighted by N(x; μ, σ'²BBᵀ) / N(x; μ, σ²BBᵀ)
(``scorefn.importance.log_weights``), enter a weighted Mann-Whitney test of whether σ'
would have ranked them better. η_σ grows, η_σ ← min(1, (1 + c) η_σ), only when that test is
significant at level ρ = ½ - 1/(3(d+1)): its one-sided p-value 1 - Φ(z_U) (normal
approximation) is below ρ. Otherwise it decays towards the default,
η_σ ← (1 - c) η_σ + c η_σ,init, with c = 1/10. On fitness that carries no information the
test is not significant and η_σ stays at η_σ,init. Reading the test the other way round
(growing unless Φ(z_U) < ρ, as some implementations do) grows η_σ whenever the evidence is
neutral, and drives it to 1 on pure noise and on ill-conditioned functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from scorefn import fisher, importance
from scorefn.es.fitness_shaping import nes_utilities, ranks
from scorefn.es.noise import standard_normal
from scorefn.es.strategy import NES, check_options
from scorefn.estimators import score_grad
from scorefn.numerics import full_precision


class XNESState(NamedTuple):
    mean: jax.Array
    sigma: jax.Array
    b: jax.Array
    key: jax.Array
    generation: jax.Array
    lr_sigma: jax.Array  # η_σ in use (adapted with adaptation sampling)
    prev_sigma: jax.Array  # σ before the last update


def _origin(state: XNESState) -> dict:
    """(δ, M) = (0, 0): the current distribution in its local coordinates."""
    d, dtype = state.mean.shape[0], state.mean.dtype
    return {"delta": jnp.zeros(d, dtype), "m": jnp.zeros((d, d), dtype)}


def local_distribution(state: XNESState) -> Any:
    """``params -> Distribution`` in the local coordinates (δ, M) around ``state``.

    N(μ + σBδ, σ² B expm(M) Bᵀ) is only used through its density and first derivatives at
    (δ, M) = (0, 0): the search gradient, its Fisher there, adaptation sampling's weights.
    So expm(M/2) is replaced by its first-order term I + M/2, which has the same score and
    Fisher at the origin and spares the autodiff through expm: a generation takes 59 instead
    of 82 µs at d = 10 and 2.2 instead of 3.5 ms at d = 100. The update itself uses expm.
    """
    a = state.sigma * state.b

    def dist_fn(params):
        m = 0.5 * (params["m"] + params["m"].T)
        factor = a + 0.5 * a @ m
        return dist.MultivariateNormal(state.mean + a @ params["delta"],
                                       covariance_matrix=factor @ factor.T)

    return dist_fn


@dataclasses.dataclass(frozen=True)
class XNES(NES):
    """Ask/tell xNES with full covariance. Rates default to the standard values.

    Adaptation sampling and mirrored sampling are on by default: together they need 1/4 to
    1/2 of plain xNES's evaluations on sphere, ellipsoid and rosenbrock at d = 10 (see
    BENCHMARKS.md). ``XNES(adaptation_sampling=False, mirrored=False)`` is the plain algorithm.
    """

    popsize: int | None = None
    lr_mean: float = 1.0
    lr_sigma: float | None = None
    lr_b: float | None = None
    adaptation_sampling: bool = True
    mirrored: bool = True
    name: str = "xnes"

    def __post_init__(self):
        check_options(self, positive=("lr_mean", "lr_sigma", "lr_b"))

    def sizes(self, dim: int) -> tuple[int, float, float, float]:
        popsize = self.popsize or 4 + int(3 * math.log(dim))
        default = 3 * (3 + math.log(dim)) / (5 * dim * math.sqrt(dim))
        return (popsize, self.lr_mean, self.lr_sigma if self.lr_sigma is not None else default,
                self.lr_b if self.lr_b is not None else default)

    def init(self, key: jax.Array, x0: jax.Array, sigma0: float = 1.0) -> XNESState:
        x0 = jnp.asarray(x0, jnp.result_type(float))
        d = x0.shape[0]
        sigma = jnp.asarray(sigma0, x0.dtype)
        return XNESState(x0, sigma, jnp.eye(d, dtype=x0.dtype), key, jnp.zeros((), jnp.int32),
                         jnp.asarray(self.sizes(d)[2], x0.dtype), sigma)

    def mean(self, state: XNESState) -> jax.Array:
        return state.mean

    def ask(self, state: XNESState) -> tuple[jax.Array, XNESState]:
        popsize = self.sizes(state.mean.shape[0])[0]
        key, sub = jax.random.split(state.key)
        z = standard_normal(sub, popsize, state.mean.shape[0], state.mean.dtype, self.mirrored)
        # At tell's precision, since tell reads x through the density of N(μ, σ²BBᵀ); a GPU
        # might otherwise round Bz to TF32 in one compiled program and not in another, and the
        # Python and the jax evaluator would search different candidates.
        with full_precision():
            return state.mean + state.sigma * z @ state.b.T, state._replace(key=key)

    def search_gradient(self, state: XNESState, x: jax.Array, values: jax.Array, *,
                        runtime_checks: bool = True) -> dict:
        """Σ_k values_k ∇ log p(x_k) in the local coordinates (δ, M) at 0, by the score function."""
        return score_grad(local_distribution(state), _origin(state), x, values * x.shape[0],
                          validate=False, runtime_checks=runtime_checks)

    def natural_gradient(self, state: XNESState, grad: dict) -> dict:
        delta, m = fisher.gaussian_local_natural_gradient(grad["delta"], grad["m"])
        return {"delta": delta, "m": m}

    def tell(self, state: XNESState, x: jax.Array, fitness: jax.Array) -> XNESState:
        # The search gradient is a sum of nearly cancelling terms and B is updated by
        # products of it: kept at full precision where a GPU would use TF32 (an H200 run
        # gave NaN here; that TF32 was the cause is our reading, not yet re-run on a GPU).
        with full_precision():
            return self._tell(state, x, fitness)

    def _tell(self, state: XNESState, x: jax.Array, fitness: jax.Array) -> XNESState:
        d = state.mean.shape[0]
        _, lr_mean, lr_sigma_init, lr_b = self.sizes(d)
        lr_sigma = state.lr_sigma
        if self.adaptation_sampling:
            lr_sigma = jnp.where(state.generation > 0,
                                 self._adapted_lr_sigma(state, x, fitness, lr_sigma_init), lr_sigma)
        nat = self.natural_search_gradient(state, x, nes_utilities(fitness))
        g_sigma = jnp.trace(nat["m"]) / d
        g_b = nat["m"] - g_sigma * jnp.eye(d, dtype=x.dtype)
        return state._replace(
            mean=state.mean + lr_mean * state.sigma * state.b @ nat["delta"],
            sigma=state.sigma * jnp.exp(0.5 * lr_sigma * g_sigma),
            b=state.b @ jax.scipy.linalg.expm(0.5 * lr_b * g_b),
            generation=state.generation + 1,
            lr_sigma=lr_sigma,
            prev_sigma=state.sigma,
        )

    def _adapted_lr_sigma(self, state: XNESState, x: jax.Array, fitness: jax.Array,
                          lr_sigma_init: float) -> jax.Array:
        """Adaptation sampling: the weighted Mann-Whitney test described in the module."""
        d = state.mean.shape[0]
        n = x.shape[0]
        origin = _origin(state)
        hypothetical = state._replace(sigma=state.sigma * jnp.sqrt(state.sigma / state.prev_sigma))
        w = jnp.exp(importance.log_weights(local_distribution(hypothetical), origin, x,
                                           local_distribution(state)(origin)))
        rank = (n - 1 - ranks(fitness)) + 0.5  # the best candidate has the highest rank
        total = jnp.sum(w)
        u = jnp.sum(w * rank)
        u_mean = n * total / 2
        u_sd = jnp.sqrt(n * total * (n + total + 1) / 12)
        p_value = jax.scipy.stats.norm.sf(u, u_mean, u_sd)  # H0: σ' ranks no better than σ
        c, rho = 0.1, 0.5 - 1 / (3 * (d + 1))
        return jnp.where(p_value < rho, jnp.minimum(1.0, (1 + c) * state.lr_sigma),
                         (1 - c) * state.lr_sigma + c * lr_sigma_init)

    def scale(self, state: XNESState) -> jax.Array:
        return state.sigma * jnp.max(jnp.linalg.norm(state.b, axis=0))


def xnes(**options: Any) -> XNES:
    """The xNES strategy; see ``XNES``."""
    return XNES(**options)
