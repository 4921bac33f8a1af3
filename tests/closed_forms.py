"""Problems with closed-form ∇θ E_{p_θ}[f], and the statistical checks the tests share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from jax.scipy.stats import norm

import scorefn


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    dist_fn: Callable
    params: Any
    f: Callable
    true_grad: Any
    differentiable_f: bool = True  # f is smooth in x (so pathwise / delta method apply)

    @property
    def reparameterised(self) -> bool:
        return bool(self.dist_fn(self.params).has_rsample)


def normal_square() -> Problem:
    """x ~ N(μ, σ²) per coordinate, f = Σ x²: ∂μ = 2μ, ∂log σ = 2σ²."""
    params = {"loc": jnp.array([1.0, -0.5, 0.0]), "log_scale": jnp.log(jnp.array([0.5, 1.0, 1.5]))}
    scale = jnp.exp(params["log_scale"])
    return Problem(
        "normal-square",
        lambda p: dist.Normal(p["loc"], jnp.exp(p["log_scale"])),
        params,
        lambda x: jnp.sum(x**2),
        {"loc": 2 * params["loc"], "log_scale": 2 * scale**2},
    )


def normal_exp() -> Problem:
    """f = Σ exp(x/2), smooth but not quadratic (the delta method is not exact):
    E = Σ exp(μ/2 + σ²/8), ∂μ = E_i/2, ∂log σ = σ² E_i/4."""
    params = {"loc": jnp.array([0.4, -0.8, 1.2]), "log_scale": jnp.log(jnp.array([0.6, 1.0, 1.4]))}
    scale = jnp.exp(params["log_scale"])
    each = jnp.exp(params["loc"] / 2 + scale**2 / 8)
    return Problem(
        "normal-exp",
        lambda p: dist.Normal(p["loc"], jnp.exp(p["log_scale"])),
        params,
        lambda x: jnp.sum(jnp.exp(x / 2)),
        {"loc": each / 2, "log_scale": scale**2 * each / 4},
    )


def normal_step() -> Problem:
    """f = Σ 1[x > 0], not differentiable: E = Σ Φ(μ/σ)."""
    params = {"loc": jnp.array([0.3, -0.4]), "log_scale": jnp.log(jnp.array([0.8, 1.2]))}
    scale = jnp.exp(params["log_scale"])
    t = params["loc"] / scale
    return Problem(
        "normal-step",
        lambda p: dist.Normal(p["loc"], jnp.exp(p["log_scale"])),
        params,
        lambda x: jnp.sum((x > 0).astype(jnp.float32)),
        {"loc": norm.pdf(t) / scale, "log_scale": -norm.pdf(t) * t},
        differentiable_f=False,
    )


def mvn_quadratic() -> Problem:
    """x ~ N(m, L Lᵀ), f = xᵀAx + bᵀx: ∇m = (A + Aᵀ)m + b, ∇L = tril((A + Aᵀ) L)."""
    a = jnp.array([[1.0, 0.3, 0.0], [0.1, 0.5, -0.2], [0.0, 0.4, 0.8]])
    b = jnp.array([0.5, -1.0, 0.2])
    params = {
        "mean": jnp.array([0.2, -0.3, 0.5]),
        "scale_tril": jnp.array([[0.7, 0.0, 0.0], [0.2, 0.9, 0.0], [-0.1, 0.3, 0.6]]),
    }
    sym = a + a.T
    return Problem(
        "mvn-quadratic",
        lambda p: dist.MultivariateNormal(p["mean"], scale_tril=jnp.tril(p["scale_tril"])),
        params,
        lambda x: x @ a @ x + b @ x,
        {"mean": sym @ params["mean"] + b, "scale_tril": jnp.tril(sym @ params["scale_tril"])},
    )


def bernoulli_rebar() -> Problem:
    """REBAR's toy: E_{b~Bern(σ(l))}[(b - 0.499)²], ∂l = (0.501² - 0.499²) σ(l)(1 - σ(l))."""
    params = {"logits": jnp.array([-0.5, 0.0, 1.0])}
    p = jax.nn.sigmoid(params["logits"])
    return Problem(
        "bernoulli-rebar",
        lambda q: dist.Bernoulli(logits=q["logits"]),
        params,
        lambda x: jnp.sum((x - 0.499) ** 2),
        {"logits": (0.501**2 - 0.499**2) * p * (1 - p)},
    )


def categorical_table() -> Problem:
    """k ~ Cat(softmax(l)), f = c_k: ∇l = p ⊙ (c - E[c])."""
    values = jnp.array([1.0, -2.0, 0.5, 3.0])
    params = {"logits": jnp.array([0.1, -0.3, 0.8, 0.0])}
    p = jax.nn.softmax(params["logits"])
    return Problem(
        "categorical-table",
        lambda q: dist.Categorical(logits=q["logits"]),
        params,
        lambda k: values[k],
        {"logits": p * (values - p @ values)},
        differentiable_f=False,
    )


def poisson_square() -> Problem:
    """k ~ Poisson(e^r), f = k²: E = λ + λ², ∂r = λ(1 + 2λ)."""
    params = {"log_rate": jnp.log(jnp.array([0.7, 2.5]))}
    rate = jnp.exp(params["log_rate"])
    return Problem(
        "poisson-square",
        lambda q: dist.Poisson(jnp.exp(q["log_rate"])),
        params,
        lambda k: jnp.sum(k.astype(jnp.float32) ** 2),
        {"log_rate": rate * (1 + 2 * rate)},
    )


def gamma_mean() -> Problem:
    """x ~ Gamma(α, β), f = x: E = α/β, ∂α = 1/β, ∂β = -α/β²."""
    params = {"concentration": jnp.array([2.0, 0.8]), "rate": jnp.array([1.5, 0.5])}
    alpha, beta = params["concentration"], params["rate"]
    return Problem(
        "gamma-mean",
        lambda q: dist.Gamma(q["concentration"], q["rate"]),
        params,
        lambda x: jnp.sum(x),
        {"concentration": 1 / beta, "rate": -alpha / beta**2},
    )


def exponential_square() -> Problem:
    """x ~ Exp(λ), f = x²: E = 2/λ², ∂λ = -4/λ³."""
    params = {"rate": jnp.array([0.8, 2.0])}
    return Problem(
        "exponential-square",
        lambda q: dist.Exponential(q["rate"]),
        params,
        lambda x: jnp.sum(x**2),
        {"rate": -4 / params["rate"] ** 3},
    )


ALL_PROBLEMS = [
    normal_square,
    normal_step,
    mvn_quadratic,
    bernoulli_rebar,
    categorical_table,
    poisson_square,
    gamma_mean,
    exponential_square,
]

Z_MAX = 4.0  # per coordinate; a false alarm has probability ~6e-5 per coordinate


def repeated(problem: Problem, key, num_samples: int, num_repeats: int, **options) -> np.ndarray:
    """``num_repeats`` independent estimates, flattened: shape (R, P), float64."""

    def estimator(k):
        return scorefn.grad(problem.f, problem.dist_fn, problem.params, k, num_samples, **options)

    stacked = jax.jit(lambda ks: jax.lax.map(estimator, ks))(jax.random.split(key, num_repeats))
    return np.asarray(jax.vmap(lambda e: ravel_pytree(e)[0])(stacked), np.float64)


def repeated_ema(problem: Problem, key, num_samples: int, num_repeats: int, decay: float,
                 **options):
    """Estimates with an EMA baseline, run in sequence as a user would (state carried)."""
    ema = scorefn.baselines.ema(decay, **options)

    def step(state, k):
        x = scorefn.sample(problem.dist_fn, problem.params, k, num_samples)
        values = jax.vmap(problem.f)(x)
        g = scorefn.score_grad(problem.dist_fn, problem.params, x, values, baseline=state)
        return ema.update(values, state), ravel_pytree(g)[0]

    _, flat = jax.jit(lambda ks: jax.lax.scan(step, ema.init(), ks))(
        jax.random.split(key, num_repeats)
    )
    return np.asarray(flat, np.float64)


def z_scores(estimates: np.ndarray, truth: Any) -> np.ndarray:
    """Per-coordinate z = (mean - truth) / (sd / √R): the estimator's own standard error.

    A floor of 1e-4·|truth| joins the standard error: float32 rounding of f's sums is
    systematic at that level, which matters only for (nearly) exact estimators.
    """
    flat_truth = np.asarray(ravel_pytree(truth)[0], np.float64)
    mean = estimates.mean(0)
    se = estimates.std(0, ddof=1) / math.sqrt(estimates.shape[0])
    se = np.sqrt(se**2 + (1e-4 * np.abs(flat_truth)) ** 2)
    diff = mean - flat_truth
    # A coordinate the estimator gets exactly (zero variance) must match exactly.
    return np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(np.abs(diff) < 1e-6, 0, np.inf))


def assert_unbiased(estimates: np.ndarray, truth: Any, z_max: float = Z_MAX) -> None:
    z = z_scores(estimates, truth)
    assert np.all(np.abs(z) < z_max), f"bias detected: z = {np.round(z, 2)}"


def detects_bias(estimates: np.ndarray, truth: Any, z_max: float = Z_MAX) -> bool:
    return bool(np.any(np.abs(z_scores(estimates, truth)) >= z_max))


def log_variance(estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log of each coordinate's sample variance and its standard error √((κ - 1)/R)."""
    centred = estimates - estimates.mean(0)
    variance = estimates.var(0, ddof=1)
    kurtosis = (centred**4).mean(0) / variance**2
    return np.log(variance), np.sqrt((kurtosis - 1) / estimates.shape[0])


def variance_z(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z of log Var[a] - log Var[b], per coordinate (independent runs)."""
    la, sa = log_variance(a)
    lb, sb = log_variance(b)
    return (la - lb) / np.hypot(sa, sb)
