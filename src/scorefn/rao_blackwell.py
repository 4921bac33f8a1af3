r"""Rao-Blackwellisation: replace sampled quantities by their exact conditional expectations.

Two forms, both unbiased, both never worse in variance than the plain score function:

**Enumeration of a discrete component.** For x = (x₁, x₂) with x₁ ~ p_θ(x₁) and a finite
x₂ | x₁ ~ p_θ(x₂ | x₁), let F_θ(x₁) = Σ_{x₂} p_θ(x₂ | x₁) f(x₁, x₂) (exact, by
``enumerate_support``). Then

$$
\nabla_\theta \mathbb{E}[f] = \mathbb{E}_{x_1}\left[(F_\theta(x_1) - b)\, \nabla_\theta \log p_\theta(x_1)
  + \nabla_\theta F_\theta(x_1)\right],
$$

the first term a score-function estimate over x₁ alone, the second exact given x₁ (autodiff
through the enumerated probabilities; f itself is never differentiated).

**Local learning signals for a factorised p_θ(x) = Π_b p_θ(x_b).** If f = Σ_t f_t and term t
depends only on the factors D_t, factor b's score needs only the terms that depend on it:

$$
\hat g = \frac{1}{N}\sum_n \sum_b L_{nb}\, \nabla_\theta \log p_\theta(x_{nb}), \qquad L_{nb} = \sum_{t:\,
  b \in D_t} f_t(x_n),
$$

since E[f_t ∇ log p(x_b)] = E[f_t] E[∇ log p(x_b)] = 0 when f_t does not involve x_b. This is
what Pyro's TraceGraph_ELBO does with its dependency graph. ``local_learning_signals`` takes
D as a matrix; ``plate_local_signal`` takes it from plates (a term inside the factor's plate
reaches only the factor with its own index), without building the matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.distributions import Distribution

from scorefn import guards, validation
from scorefn.baselines import as_baseline
from scorefn.estimators import score_grad
from scorefn.numerics import full_precision
from scorefn.sampling import sample
from scorefn.scores import joint_log_prob, log_prob
from scorefn.types import DistFn


def local_learning_signals(term_values: jax.Array, dependencies: jax.Array,
                           batch_shape: tuple[int, ...]) -> jax.Array:
    r"""L_nb = Σ_t D_tb f_t(x_n): shape (N, *batch_shape) from ``term_values`` (N, T) and a
    0/1 ``dependencies`` matrix (T, B), B = prod(batch_shape), D_tb = 1 if term t depends on
    factor b."""
    term_values = jnp.asarray(term_values)
    dependencies = jnp.asarray(dependencies)
    size = math.prod(batch_shape)
    if term_values.ndim != 2:
        raise ValueError(f"term_values must be (num_samples, num_terms); got {term_values.shape}")
    if dependencies.shape != (term_values.shape[1], size):
        raise ValueError(
            f"dependencies must be (num_terms, prod(batch_shape)) = ({term_values.shape[1]}, "
            f"{size}), D[t, b] = 1 when term t depends on factor b; got {dependencies.shape}"
        )
    with full_precision():  # TF32 would round the signals (a GPU's default for float32 matmul)
        signals = term_values @ dependencies.astype(term_values.dtype)
    return signals.reshape((term_values.shape[0], *batch_shape))


def plate_local_signal(term_values: jax.Array, shared_axes: list[tuple[int, int]],
                       batch_shape: tuple[int, ...]) -> jax.Array:
    r"""One term's share of the local learning signals L_nb, from plates: ``term_values``
    (N, *term_shape) summed over every term axis except the plate axes the term shares with
    the factors, given as (term axis, factor batch axis) pairs, which line up with the
    factor's own index. Broadcastable to (N, *batch_shape): factor b gets Σ of the term's
    elements in its own plate slice (and the whole term along plates it does not share),
    which is L_nb's part from this term when the term's elements depend only on the factors
    with their own plate index."""
    n = term_values.shape[0]
    term_ndim = term_values.ndim - 1
    keep = sorted(shared_axes)
    kept_term_axes = {t for t, _ in keep}
    summed = jnp.sum(term_values, axis=tuple(1 + a for a in range(term_ndim)
                                             if a not in kept_term_axes))
    order = np.argsort([b for _, b in keep])
    summed = jnp.transpose(summed, (0, *(1 + int(i) for i in order)))
    shape = [1] * len(batch_shape)
    for t, b in keep:
        shape[b] = term_values.shape[1 + t]
    return summed.reshape((n, *shape))


def local_score_grad(
    dist_fn: DistFn,
    params: Any,
    samples: jax.Array,
    term_values: jax.Array,
    dependencies: jax.Array,
    *,
    baseline: Any = None,
    **options: Any,
) -> Any:
    r"""Score-function gradient of E[Σ_t f_t] with each factor's local learning signal.

    ``dist_fn(params)`` is a batched distribution whose batch elements are independent
    factors; ``term_values`` (N, T) holds each term f_t at each sample; ``dependencies``
    (T, prod(batch_shape)) says which factors each term reads. Per-sample baselines
    (``leave_one_out()``, ``constant``, an EMA state of shape batch_shape) act per factor.
    Unbiased; lower variance than weighting every score by the whole f.
    """
    batch_shape = tuple(dist_fn(params).batch_shape)
    signals = local_learning_signals(term_values, dependencies, batch_shape)
    return score_grad(dist_fn, params, samples, signals, baseline=baseline, per_factor=True,
                      **options)


def enumerate_grad(
    f: Callable[[jax.Array, jax.Array], jax.Array],
    marginal_fn: DistFn,
    conditional_fn: Callable[[Any, jax.Array], Distribution],
    params: Any,
    key: jax.Array,
    num_samples: int,
    *,
    baseline: Any = None,
    rao_blackwellize: bool = True,
    runtime_checks: bool = True,
) -> Any:
    r"""∇θ E_{x₁~p_θ, x₂~p_θ(·|x₁)}[f(x₁, x₂)] with x₂ summed out exactly.

    Args:
      f: ``f(x1, x2) -> scalar`` for one sample (vmapped here; need not be differentiable).
      marginal_fn: ``params -> Distribution`` over x₁.
      conditional_fn: ``(params, x1) -> Distribution`` over x₂ for one x₁, with
        ``enumerate_support`` (Bernoulli, Categorical, Binomial...), batch_shape ().
      rao_blackwellize: ``False`` samples x₂ instead and applies the plain score function to
        the joint: the estimator this one improves on, for comparison.
      runtime_checks: as ``scorefn.score_grad``'s (False: no host callback under ``jit``).

    Unbiased either way; with enumeration the variance is never higher.
    """
    validation.check_key(key)
    num_samples = validation.check_int(num_samples, "num_samples")
    key_x1, key_x2 = jax.random.split(key)
    x1 = sample(marginal_fn, params, key_x1, num_samples)
    conditional = conditional_fn(params, x1[0])
    if not getattr(conditional, "has_enumerate_support", False):
        raise ValueError(
            f"conditional_fn must return a distribution with a finite, enumerable support; "
            f"{type(conditional).__name__} has none (has_enumerate_support=False)"
        )
    if tuple(conditional.batch_shape) != ():
        raise ValueError(
            "conditional_fn must return one discrete variable per x1 (batch_shape ()); got "
            f"batch_shape {tuple(conditional.batch_shape)}"
        )

    validation.check_support_independent(marginal_fn, params)
    if not rao_blackwellize:
        keys = jax.random.split(key_x2, num_samples)
        x2 = jax.vmap(lambda k, a: jax.lax.stop_gradient(conditional_fn(params, a).sample(k)))(
            keys, x1)
        values = jax.vmap(f)(x1, x2)

        def pair_log_prob(p):
            lp2 = jax.vmap(lambda a, b: log_prob(conditional_fn(p, a), b))(x1, x2)
            return joint_log_prob(marginal_fn(p), x1) + lp2

        return _score_of(pair_log_prob, params, values, baseline, runtime_checks)

    support = conditional.enumerate_support(expand=False)  # (K,)

    def table(a):  # f(x1, k) for every k in the support
        return jax.vmap(lambda b: f(a, b))(support)

    f_table = jax.lax.stop_gradient(jax.vmap(table)(x1))  # (N, K)

    def conditional_expectation(p):
        def one(a, row):
            log_probs = log_prob(conditional_fn(p, a), support)
            return jnp.sum(jnp.exp(log_probs) * row)

        return jax.vmap(one)(x1, f_table)

    expected = jax.lax.stop_gradient(conditional_expectation(params))
    # Some params may belong to the conditional only: check the marginal's support here and
    # skip score_grad's "every param is used" check.
    validation.check_support_independent(marginal_fn, params)
    outer = score_grad(marginal_fn, params, x1, expected, baseline=baseline, validate=False,
                       runtime_checks=runtime_checks)
    with numpyro.validation_enabled(False):
        inner = jax.grad(lambda p: jnp.mean(conditional_expectation(p)))(params)
    return jax.tree.map(jnp.add, outer, inner)


def _score_of(log_prob_fn: Callable[[Any], jax.Array], params: Any, values: jax.Array,
              baseline: Any, runtime_checks: bool) -> Any:
    b = as_baseline(baseline)
    centred = values if b is None else values - b(values)
    weights = jax.lax.stop_gradient(centred)
    guard = guards.finite_guard((values, guards.nonfinite_values_message), enabled=runtime_checks)
    with numpyro.validation_enabled(False):
        estimate = jax.grad(lambda p: jnp.mean(weights * log_prob_fn(p)))(params)
    return jax.tree.map(lambda g: g + guard.astype(g.dtype), estimate)

