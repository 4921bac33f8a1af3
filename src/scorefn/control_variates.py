r"""Control variates for the score-function estimator.

A control variate is a function h(x) whose expectation E_{p_θ}[h] is known in closed form as
a function of θ. Since ∇θ E[h] = E[h(x) ∇θ log p_θ(x)], the term

$$
c(x) = h(x)\, \nabla_\theta \log p_\theta(x) - \nabla_\theta \mathbb{E}_{p_\theta}[h]
$$

has mean zero, and subtracting β ⊙ c(x) (β one number per parameter coordinate) from the
per-sample gradient f(x) ∇θ log p_θ(x) keeps the estimator unbiased for any β independent of
x. The variance-minimising coefficient is

    β*_j = Cov(f g_j, c_j) / Var(c_j) = E[f g_j c_j] / E[c_j²]        (because E[c] = 0),

estimated per coordinate from the *other* samples (``coefficient="optimal"``, unbiased) or
from the whole batch (``coefficient="optimal_batch"``, biased O(1/N)); a fixed number works
too. A fitted β has noise of its own: an h barely correlated with f can raise the variance a
little (the tests saw +12% on one coordinate with h(x) = Σx, f = Σx², N = 200), so pick h
close to f. Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo Gradient Estimation in Machine
Learning", JMLR 21(132), section 7.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution

from scorefn.baselines import leave_one_out_ratio
from scorefn.discrete import base_distribution
from scorefn.numerics import full_precision, ratio_or_zero
from scorefn.types import DistFn
from scorefn.validation import is_traced

HFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ControlVariate:
    r"""h(x) with a closed-form expectation, and how to choose its coefficient β.

    ``h`` maps one sample (shape ``batch_shape + event_shape``) to a scalar. ``expectation``
    maps the distribution ``dist_fn(params)`` to E[h], differentiably in its parameters.
    ``coefficient`` is ``"optimal"`` (leave-one-out per-coordinate β*, unbiased),
    ``"optimal_batch"`` (β* from the whole batch, biased O(1/N)) or a number.
    """

    h: HFn
    expectation: Callable[[Distribution], jax.Array]
    coefficient: Any = "optimal"
    name: str = "control_variate"

    def __post_init__(self):
        if isinstance(self.coefficient, str) and self.coefficient not in (
            "optimal",
            "optimal_batch",
        ):
            raise ValueError(
                "coefficient must be 'optimal', 'optimal_batch' or a number, "
                f"got {self.coefficient!r}"
            )
        if (not isinstance(self.coefficient, str) and not is_traced(self.coefficient)
                and not np.all(np.isfinite(self.coefficient))):
            # a NaN β makes every estimate NaN
            raise ValueError(f"coefficient must be finite, got {self.coefficient!r}")

    @property
    def unbiased(self) -> bool:
        return self.coefficient != "optimal_batch"

    @property
    def needs_scores(self) -> bool:
        return isinstance(self.coefficient, str)

    def prepare(self, dist_fn: DistFn, params: Any) -> tuple[HFn, Callable]:
        """Return ``(h, mean_fn)`` with ``mean_fn(params) = E_{p_params}[h]``."""
        return self.h, lambda p: self.expectation(dist_fn(p))


def generic(
    h: HFn,
    expectation: Callable[[Distribution], jax.Array],
    coefficient: Any = "optimal",
) -> ControlVariate:
    r"""A control variate from any h with known mean, e.g. for a Normal:

    ```python
    cv = scorefn.control_variates.generic(lambda x: x.sum(), lambda d: d.mean.sum())
    ```

    Unbiased with ``coefficient="optimal"`` or a fixed number.
    """
    return ControlVariate(h=h, expectation=expectation, coefficient=coefficient, name="generic")


def score(coefficient: Any = "optimal") -> ControlVariate:
    r"""The score itself: h ≡ 1, so c(x) = ∇θ log p_θ(x), which has E[c] = 0.

    With the optimal coefficient, β*_j = E[f g_j²] / E[g_j²]: this is the optimal baseline of
    ``scorefn.baselines.optimal`` (the tests check the two agree). Unbiased.
    """
    return ControlVariate(
        h=lambda x: jnp.ones((), jnp.result_type(float)),
        expectation=lambda d: jnp.ones((), jnp.result_type(float)),
        coefficient=coefficient,
        name="score",
    )


@dataclasses.dataclass(frozen=True)
class DeltaMethod(ControlVariate):
    r"""Second-order Taylor expansion of f around the mean μ₀ of p_θ (held fixed):

    $$
    \begin{aligned} h(x) &= f(\mu_0) + \nabla f(\mu_0)^\top (x - \mu_0) + \tfrac12 (x - \mu_0)^\top
      H(\mu_0)\, (x - \mu_0) \\ \mathbb{E}_\theta[h] &= f(\mu_0) + \nabla f(\mu_0)^\top (\mu_\theta -
      \mu_0) + \tfrac12 \left[(\mu_\theta - \mu_0)^\top H (\mu_\theta - \mu_0) + \operatorname{tr}(H
      \Sigma_\theta)\right] \end{aligned}
    $$

    μ₀ is ``stop_gradient(mean)``, so h is a fixed function and the correction ∇θ E_θ[h]
    comes from differentiating the closed form through μ_θ and Σ_θ. Needs a differentiable
    JAX ``f`` and a distribution with ``mean`` and ``variance`` (independent coordinates,
    batched or under ``to_event``) or
    ``covariance_matrix`` (one multivariate event). Unbiased with the optimal coefficient.
    The Hessian is dense (D × D for D = size of one sample). Mohamed et al. (2020) §7.2.
    """

    f: Callable[[jax.Array], jax.Array] | None = None
    name: str = "delta_method"

    def prepare(self, dist_fn: DistFn, params: Any) -> tuple[HFn, Callable]:
        f = self.f
        d = dist_fn(params)
        shape = tuple(d.batch_shape) + tuple(d.event_shape)
        mu0 = jax.lax.stop_gradient(jnp.broadcast_to(d.mean, shape))
        with full_precision():
            f0, grad0 = jax.value_and_grad(f)(mu0)
            hess0 = jax.hessian(f)(mu0).reshape(mu0.size, mu0.size)
        grad0 = grad0.reshape(-1)

        # h(x) - E[h] cancels to f's local fluctuation, so both are full precision where a
        # GPU would use TF32 (an H200 run showed a bias of z = -78 here; TF32 as its cause
        # is our reading, not yet re-run on a GPU).
        def h(x):
            with full_precision():
                dx = (x - mu0).reshape(-1)
                return f0 + grad0 @ dx + 0.5 * dx @ hess0 @ dx

        def mean_fn(p):
            with full_precision():
                dist = dist_fn(p)
                dmu = (jnp.broadcast_to(dist.mean, shape) - mu0).reshape(-1)
                return f0 + grad0 @ dmu + 0.5 * (dmu @ hess0 @ dmu
                                                 + _trace_h_sigma(hess0, dist, shape))

        return h, mean_fn


def _trace_h_sigma(hess: jax.Array, d: Distribution, shape: tuple[int, ...]) -> jax.Array:
    # Independent (to_event) and expanded wrappers keep the coordinates independent.
    if not delta_method_supports(d):
        raise ValueError(
            f"delta_method needs a distribution with independent coordinates (event_shape == (), "
            f"also under to_event) or "
            f"one multivariate event with a covariance_matrix; got {type(d).__name__} with "
            f"batch_shape {tuple(d.batch_shape)} and event_shape {tuple(d.event_shape)}"
        )
    if len(base_distribution(d).event_shape) == 0:
        variance = jnp.broadcast_to(d.variance, shape).reshape(-1)
        return jnp.sum(jnp.diagonal(hess) * variance)
    return jnp.sum(hess * d.covariance_matrix)


def delta_method_supports(d: Distribution) -> bool:
    """Whether the delta method's E[h] has a closed form for ``d``: independent coordinates
    (``event_shape == ()``, also under ``to_event``) or one multivariate event with a
    ``covariance_matrix``."""
    return (len(base_distribution(d).event_shape) == 0
            or (len(d.batch_shape) == 0 and hasattr(d, "covariance_matrix")))


def delta_method(f: Callable[[jax.Array], jax.Array], coefficient: Any = "optimal") -> DeltaMethod:
    """The second-order Taylor (delta-method) control variate of f. See ``DeltaMethod``."""
    if not callable(f):
        raise TypeError(f"delta_method needs the (differentiable, JAX) function f; got {f!r}")
    return DeltaMethod(h=None, expectation=None, coefficient=coefficient, f=f)


def with_control_variate(terms: Any, controls: Any, coefficient: Any, fit: Any = None, *,
                         centred: bool = False) -> Any:
    r"""terms_n - β ⊙ c_n per sample n and parameter coordinate, for mean-zero controls c_n.

    ``coefficient``: ``"optimal"``, β_j = Σ_{m≠n} a_mj c_mj / Σ_{m≠n} c_mj² from the other
    samples (unbiased); ``"optimal_batch"``, the same from all samples (biased O(1/N)); or a
    number. ``fit`` (default ``terms``) are the a_n that β is fitted against. ``centred``
    fits on a_m minus the mean of the same samples' a (a covariance instead of a raw second
    moment): for terms whose mean is large against their spread, as pathwise and
    measure-valued terms are (their mean is the gradient), the raw moment's noise would
    swamp β. Every leaf has a leading sample axis.
    """
    fit = terms if fit is None else fit

    def loo_beta(a, c):
        if not centred:
            return leave_one_out_ratio(a * c, c * c)
        n = a.shape[0]
        others_mean = (jnp.sum(a, 0) - a) / (n - 1)
        num = (jnp.sum(a * c, 0) - a * c) - others_mean * (jnp.sum(c, 0) - c)
        return ratio_or_zero(num, jnp.sum(c * c, 0) - c * c)

    def batch_beta(a, c):
        centre = jnp.mean(a, 0) if centred else 0.0
        return ratio_or_zero(jnp.sum((a - centre) * c, 0), jnp.sum(c * c, 0))[None]

    if coefficient == "optimal":
        beta = jax.tree.map(loo_beta, fit, controls)
    elif coefficient == "optimal_batch":
        beta = jax.tree.map(batch_beta, fit, controls)
    else:
        beta = jax.tree.map(lambda c: jnp.asarray(coefficient, c.dtype), controls)
    return jax.tree.map(lambda t, bj, c: t - bj * c, terms, beta, controls)
