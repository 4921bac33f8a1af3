r"""Gradient estimators of ∇θ E_{x~p_θ}[f(x)].

Score function (log-derivative trick, REINFORCE):

$$
\nabla_\theta \mathbb{E}_p[f] = \mathbb{E}_p\left[f(x)\, \nabla_\theta \log p_\theta(x)\right] \approx
  \frac{1}{N}\sum_n (f(x_n) - b_n)\, \nabla_\theta \log p_\theta(x_n)
$$

unbiased for any f (no differentiability needed) and any p_θ with a differentiable
``log_prob`` whose support does not depend on θ, provided the baseline b_n is independent of
x_n. Pathwise (reparameterisation):

$$
\nabla_\theta \mathbb{E}_p[f] = \mathbb{E}_\epsilon\left[\nabla_\theta f(T(\epsilon, \theta))\right]
  \approx \frac{1}{N}\sum_n \nabla_\theta f(T(\epsilon_n, \theta)), \qquad x = T(\epsilon, \theta)
$$

unbiased, needs a differentiable f and a distribution with a reparameterised sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax

from scorefn import guards, registry, validation
from scorefn.baselines import Baseline, as_baseline, leave_one_out
from scorefn.control_variates import ControlVariate, with_control_variate
from scorefn.discrete import antithetic_grad, rebar, relaxed_grad, sum_and_sample_grad
from scorefn.measure_valued import measure_valued_grad
from scorefn.sampling import sample
from scorefn.scores import joint_log_prob, log_prob, scores_and_log_prob
from scorefn.types import DistFn

#: The estimators ``grad`` takes for one distribution: ``scorefn.registry``'s, by name.
ESTIMATORS = registry.names(single_distribution=True)


def standardized(values: jax.Array, eps: float = 1e-8, ddof: int = 0) -> jax.Array:
    """(f - mean f) / (std f + eps) over the batch (``ddof=1``: the unbiased std, torch's
    convention, which policy-gradient libraries such as Stable-Baselines3 use).

    **Not unbiased** for ∇θ E[f]: it rescales the gradient by 1/std and subtracts the batch
    mean (a baseline that includes the sample's own value). It estimates the direction of a
    rescaled objective, the usual choice in policy-gradient methods and evolution strategies.
    """
    return (values - jnp.mean(values)) / (jnp.std(values, ddof=ddof) + eps)


def f_values(f: Callable, samples: jax.Array, vectorized: bool = False) -> jax.Array:
    """f's value at every sample, step two of ``sample → f → score_grad``: ``jax.vmap(f)``
    for a per-sample f, or ``f(samples)`` if ``vectorized``, e.g. a Python simulator that
    takes the whole batch."""
    return f(samples) if vectorized else jax.vmap(f)(samples)


def _prepare_values(
    values: Any, samples: Any, num_samples: int, nan_policy: str, dtype, batch_shape=None
):
    values = validation.check_values_shape(values, num_samples, batch_shape).astype(dtype)
    validation.check_nan_policy(nan_policy, ("raise", "drop"))
    if nan_policy == "raise":
        return samples, values  # checked with log_prob in one guard, see score_grad
    if validation.is_traced(values):
        raise ValueError(
            "nan_policy='drop' changes the number of samples, so it needs concrete values: call "
            "score_grad outside jax.jit (evaluate f in Python), or use nan_policy='raise'"
        )
    keep = np.isfinite(np.asarray(values)).reshape(num_samples, -1).all(axis=1)
    if not keep.any():
        raise ValueError("f returned no finite value: nan_policy='drop' would drop every sample")
    if keep.all():
        return samples, values
    index = np.flatnonzero(keep)
    return jax.tree.map(lambda x: x[index], samples), values[index]


def _float_dtype(params: Any):
    leaves = [leaf for leaf in jax.tree.leaves(params) if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)]
    return jnp.result_type(*leaves) if leaves else jnp.result_type(float)


def score_grad(
    dist_fn: DistFn,
    params: Any,
    samples: jax.Array,
    values: jax.Array,
    *,
    baseline: Any = None,
    control_variate: ControlVariate | None = None,
    standardize: bool = False,
    max_norm: float | None = None,
    nan_policy: str = "raise",
    per_sample: bool = False,
    validate: bool = True,
    per_factor: bool = False,
    samples_from_dist: bool = False,
    runtime_checks: bool = True,
) -> Any:
    r"""Score-function estimate of ∇θ E_{x~p_θ}[f(x)] from samples and their f values.

    $$
    \hat g = \frac{1}{N}\sum_n \left[(f_n - b_n)\, g_n - \beta \odot \left(h(x_n)\, g_n - \nabla_\theta
      \mathbb{E}_\theta[h]\right)\right], \qquad g_n = \nabla_\theta \log p_\theta(x_n)
    $$

    Unbiased when the baseline b and the control-variate coefficient β are independent of
    x_n (every choice in ``scorefn.baselines`` and ``scorefn.control_variates`` says
    whether it is). Step three of ``sample → f → score_grad``: ``values`` may come from
    anywhere (a Python simulator, a remote worker).

    Args:
      dist_fn: ``params -> numpyro Distribution``.
      params: any pytree of arrays θ.
      samples: ``(N, *batch_shape, *event_shape)``, e.g. from ``scorefn.sample``.
      values: ``(N,)``, f at each sample; or, with ``per_factor=True``, ``(N, *batch_shape)``:
        a learning signal per independent factor of a batched p_θ, factor b's score then
        weighted only by its own column, ĝ = (1/N) Σ_n Σ_b (L_nb - b_nb) ∇θ log p_θ(x_nb).
        Unbiased when each L_b holds every term of f that depends on x_b (see
        ``scorefn.rao_blackwell``).
      baseline: None, a number, an ``scorefn.baselines.EmaState`` or a baseline from
        ``scorefn.baselines``.
      control_variate: a ``scorefn.control_variates.ControlVariate``.
      standardize: replace f by (f - mean)/std first (not unbiased; see
        ``standardized``).
      max_norm: clip the estimate's global norm with ``optax.clip_by_global_norm`` (biased).
      nan_policy: ``"raise"`` (default) stops on NaN/inf values, naming how many and the
        first index; ``"drop"`` removes those samples (outside ``jit`` only).
      per_sample: return the N per-sample contributions (each leaf with a leading N axis)
        whose mean is the estimate, to assess the variance yourself.
      validate: run the checks on params, support and log_prob (structural ones cost
        nothing at run time under ``jit``).
      per_factor: accept per-factor values (see ``values``).
      samples_from_dist: the caller drew ``samples`` from ``dist_fn(params)`` itself, so
        the run-time check that external samples lie in the support (and have a finite
        log_prob) is skipped; the other checks stay.
      runtime_checks: under ``jit``, the checks of values, arguments and external samples
        run in the compiled program (a ``lax.cond`` whose error branch calls back to
        Python). False leaves them out (no host callback: the program can be exported and
        cached; check the outputs yourself), as scorefn's training loops do.

    Returns:
      A pytree shaped like ``params`` (with a leading N axis if ``per_sample``).
    """
    checked = _checked_inputs(dist_fn, params, samples, values, baseline=baseline,
                              control_variate=control_variate, standardize=standardize,
                              max_norm=max_norm, nan_policy=nan_policy, per_sample=per_sample,
                              validate=validate, per_factor=per_factor)
    samples, values = checked.samples, checked.values
    if standardize:
        values = standardized(values)
    # The gradient is traced without numpyro's per-call support mask (a where over every
    # sample, ~15% of the cost); samples drawn from p_θ are in its support, and external
    # samples are checked by the run-time guard.
    with numpyro.validation_enabled(False):
        if checked.needs_scores:
            contributions, log_prob = _contributions(dist_fn, params, samples, values,
                                                     checked.baseline, control_variate)
            estimate = jax.tree.map(lambda c: jnp.mean(c, axis=0), contributions)
            finite_log_prob = jnp.all(jnp.isfinite(log_prob))
        else:
            estimate, surrogate = _surrogate_grad(dist_fn, params, samples, values,
                                                  checked.baseline, control_variate)
            # A non-finite log_prob makes the surrogate non-finite (even 0 · inf is NaN).
            finite_log_prob = jnp.isfinite(surrogate)
    guard = _runtime_guard(checked.distribution, dist_fn, params, samples, values, finite_log_prob,
                           estimate, check_values=nan_policy == "raise", validate=validate,
                           external_samples=not samples_from_dist, enabled=runtime_checks)
    if guard is not None:
        estimate = _with_guard(estimate, guard)
        if per_sample:
            contributions = _with_guard(contributions, guard)
    if per_sample:
        return contributions
    if max_norm is not None:
        estimate, _ = optax.clip_by_global_norm(max_norm).update(estimate, optax.EmptyState())
    return estimate


class _CheckedInputs(NamedTuple):
    distribution: Any
    samples: Any
    values: jax.Array
    baseline: Baseline | None
    needs_scores: bool


def _checked_inputs(dist_fn, params, samples, values, *, baseline, control_variate, standardize,
                    max_norm, nan_policy, per_sample, validate, per_factor) -> _CheckedInputs:
    """``score_grad``'s checks that need no run time (shapes, dtypes, options, structure);
    values with NaN dropped under ``nan_policy="drop"``; the baseline as a ``Baseline``."""
    validation.check_float_params(params)
    d = dist_fn(params)
    validation.check_distribution(d)
    num_samples = validation.check_samples_shape(d, samples)
    samples, values = _prepare_values(
        values, samples, num_samples, nan_policy, _float_dtype(params),
        tuple(d.batch_shape) if per_factor else None,
    )
    per_factor = values.ndim > 1
    if validate:
        validation.check_support_independent(dist_fn, params)
        validation.check_params_used(dist_fn, params, samples)
    if standardize and num_samples < 2:
        raise ValueError("standardize=True divides by the standard deviation of the N values, "
                         f"which needs num_samples >= 2; got {num_samples}")
    _check_max_norm(max_norm, per_sample)
    baseline = as_baseline(baseline)
    if baseline is not None and num_samples < baseline.min_samples:
        raise ValueError(f"the {baseline.name} baseline needs num_samples >= "
                         f"{baseline.min_samples} (with one sample it would be built from that "
                         f"sample's own value); got {num_samples}")
    cv = control_variate
    if cv is not None and not isinstance(cv, ControlVariate):
        raise TypeError(
            "control_variate must come from scorefn.control_variates (generic, score, "
            f"delta_method); got {type(cv).__name__}"
        )
    needs_scores = (
        per_sample
        or (baseline is not None and baseline.per_coordinate)
        or (cv is not None and cv.needs_scores)
    )
    if per_factor and (needs_scores or cv is not None):
        raise ValueError(
            "per-factor values (shape (num_samples, *batch_shape)) work with per-sample baselines "
            "(constant, ema, leave_one_out, batch_mean) only; per_sample, the optimal baseline and "
            "control variates need values of shape (num_samples,)"
        )
    return _CheckedInputs(d, samples, values, baseline, needs_scores)


def _runtime_guard(d, dist_fn, params, samples, values, finite_log_prob, estimate, *,
                   check_values: bool, validate: bool, external_samples: bool,
                   enabled: bool) -> jax.Array | None:
    """The one run-time check of ``score_grad`` (a zero, or a ValueError from the host when
    it fails; see ``guards.finite_guard``). Last, the estimate itself: with finite values,
    valid arguments and finite log p, a non-finite estimate comes from the baseline or the
    control variate (or an overflow), which would otherwise return NaN quietly. None when
    nothing is checked."""
    ok = jnp.all(jnp.isfinite(values))
    checks = [(values, guards.nonfinite_values_message)] if check_values else []
    if validate:
        # A zero scale or a probability outside [0, 1] gives NaN or a wrong gradient quietly.
        arguments_ok, argument_checks = guards.argument_checks(d)
        ok = ok & arguments_ok
        checks = argument_checks + checks
    if validate and external_samples:
        # Samples from elsewhere: in the support, and a finite log_prob at each. Costs one
        # forward pass; log_prob itself is recomputed (with numpyro's mask) only on error.
        ok = ok & jnp.all(d.support(samples)) & finite_log_prob

        def log_prob_with_mask():
            with numpyro.validation_enabled(True):
                return joint_log_prob(dist_fn(params), samples)

        checks.append((log_prob_with_mask, guards.neg_inf_log_prob_message))
    leaves = jax.tree.leaves(estimate)
    if leaves:
        ok = ok & jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
        checks.append((lambda: jnp.concatenate([jnp.ravel(leaf) for leaf in leaves]),
                       guards.nonfinite_estimate_message))
    return guards.finite_guard(*checks, ok=ok, enabled=enabled) if checks else None


def _with_guard(tree: Any, guard: jax.Array) -> Any:
    """Add the guard's zero to every leaf: the run-time finiteness check then cannot be
    dead-code eliminated, and it costs one addition per parameter."""
    return jax.tree.map(lambda x: x + guard.astype(x.dtype), tree)


def _surrogate_grad(dist_fn, params, samples, values, baseline: Baseline | None, cv):
    """One reverse pass through mean((f - b) log p): the cheap path for scalar baselines."""
    centred = values if baseline is None else values - baseline(values)
    mean_fn = None
    if cv is not None:
        h, mean_fn = cv.prepare(dist_fn, params)
        beta = jnp.asarray(cv.coefficient, values.dtype)
        centred = centred - beta * jax.vmap(h)(samples)
    weights = jax.lax.stop_gradient(centred)

    def surrogate(p):
        if weights.ndim > 1:  # one learning signal per factor: weight each factor's log_prob
            out = jnp.sum(jnp.mean(weights * log_prob(dist_fn(p), samples), axis=0))
        else:
            out = jnp.mean(weights * joint_log_prob(dist_fn(p), samples))
        if mean_fn is not None:
            out = out + beta * mean_fn(p)
        return out

    value, estimate = jax.value_and_grad(surrogate)(params)
    return estimate, value


def _contributions(dist_fn, params, samples, values, baseline: Baseline | None, cv):
    """Per-sample terms (f_n - b_n) g_n - β ⊙ c_n, each leaf with a leading N axis."""
    scores, log_prob = scores_and_log_prob(dist_fn, params, samples)
    n = values.shape[0]

    def expand(x, leaf):
        return x.reshape((n,) + (1,) * (leaf.ndim - 1))

    if baseline is None:
        contributions = jax.tree.map(lambda g: expand(values, g) * g, scores)
    elif baseline.per_coordinate:
        b = baseline(values, scores)
        contributions = jax.tree.map(lambda g, bj: (expand(values, g) - bj) * g, scores, b)
    else:
        centred = values - baseline(values)
        contributions = jax.tree.map(lambda g: expand(centred, g) * g, scores)
    if cv is not None:
        h, mean_fn = cv.prepare(dist_fn, params)
        h_values = jax.vmap(h)(samples).astype(values.dtype)
        grad_mean_h = jax.grad(mean_fn)(params)
        controls = jax.tree.map(
            lambda g, dh: expand(h_values, g) * g - dh[None], scores, grad_mean_h
        )
        # β is fitted against the plain f·g terms, which involve no other sample, so a
        # leave-one-out β stays independent of x_n even when a batch baseline is used too.
        raw = jax.tree.map(lambda g: expand(values, g) * g, scores)
        contributions = with_control_variate(contributions, controls, cv.coefficient, fit=raw)
    return contributions, log_prob


def pathwise_grad(
    f: Callable,
    dist_fn: DistFn,
    params: Any,
    key: jax.Array,
    num_samples: int,
    *,
    vectorized: bool = False,
    max_norm: float | None = None,
    per_sample: bool = False,
    control_variate: ControlVariate | None = None,
    runtime_checks: bool = True,
) -> Any:
    r"""Pathwise (reparameterisation) estimate (1/N) Σ_n ∇θ f(T(ε_n, θ)); unbiased.

    Needs a differentiable JAX f and a numpyro distribution with ``has_rsample``; draws with
    ``dist_fn(params).rsample(key, (N,))``, so the same key gives the same samples as
    ``scorefn.sample``. A ``control_variate`` h (differentiable, with E[h] in closed
    form) subtracts β ⊙ (∇θ h(T(ε_n, θ)) - ∇θ E_θ[h]), which has mean zero:

    $$
    \hat g = \frac{1}{N}\sum_n \left[\nabla_\theta f(T(\epsilon_n, \theta)) - \beta \odot
      \left(\nabla_\theta h(T(\epsilon_n, \theta)) - \nabla_\theta \mathbb{E}_\theta[h]\right)\right]
    $$

    unbiased with the leave-one-out ``"optimal"`` β or a fixed one. ``runtime_checks``: as
    ``score_grad``'s (a ValueError under ``jit`` when f returns NaN or inf).
    """
    validation.check_key(key)
    num_samples = validation.check_int(num_samples, "num_samples")
    d = dist_fn(params)
    if not d.has_rsample:
        raise ValueError(
            f"estimator='pathwise' needs a reparameterised sampler, but dist_fn(params) is "
            f"{type(d).__name__}, which has none (has_rsample=False; discrete distributions never "
            "do). Use estimator='score'."
        )
    _check_max_norm(max_norm, per_sample)

    def values_of(p, fn=f):
        x = dist_fn(p).rsample(key, (num_samples,))
        values = f_values(fn, x, vectorized)
        validation.check_values_shape(values, num_samples)
        return values

    if control_variate is not None:
        h, mean_fn = control_variate.prepare(dist_fn, params)
        values = values_of(params)
        guard = guards.finite_guard((values, guards.nonfinite_values_message),
                                    enabled=runtime_checks)
        terms = _per_sample_jacobian(values_of, params, num_samples)
        h_terms = _per_sample_jacobian(lambda p: values_of(p, h), params, num_samples)
        controls = jax.tree.map(lambda a, m: a - m[None], h_terms, jax.grad(mean_fn)(params))
        terms = with_control_variate(terms, controls, control_variate.coefficient,
                                     centred=True)
        out = terms if per_sample else jax.tree.map(lambda t: jnp.mean(t, axis=0), terms)
        out = _with_guard(out, guard)
        if max_norm is not None:
            out, _ = optax.clip_by_global_norm(max_norm).update(out, optax.EmptyState())
        return out

    if per_sample:
        values = values_of(params)
        guard = guards.finite_guard((values, guards.nonfinite_values_message),
                                    enabled=runtime_checks)
        # The N × P Jacobian of the values: forward mode costs P passes over the N samples
        # and O(N·P) memory; reverse mode (jacrev) would vmap N cotangents, an N × N
        # intermediate (1.6 GB at N = 20,000). Reverse only when P exceeds N.
        return _with_guard(_per_sample_jacobian(values_of, params, num_samples), guard)

    def mean_value(p):
        values = values_of(p)
        return jnp.mean(values), values

    estimate, values = jax.grad(mean_value, has_aux=True)(params)
    guard = guards.finite_guard((values, guards.nonfinite_values_message), enabled=runtime_checks)
    estimate = _with_guard(estimate, guard)
    if max_norm is not None:
        estimate, _ = optax.clip_by_global_norm(max_norm).update(estimate, optax.EmptyState())
    return estimate


def _check_max_norm(max_norm: Any, per_sample: bool) -> None:
    """max_norm: None or a positive number (a traced one is the caller's to keep positive).
    A zero would return a zero gradient, a negative one flip its sign, NaN make it NaN."""
    if max_norm is None:
        return
    if per_sample:
        raise ValueError("max_norm clips the averaged estimate; it cannot be used with per_sample")
    if not validation.is_traced(max_norm):
        validation.check_real(max_norm, "max_norm", 0.0, low_open=True)


def _per_sample_jacobian(values_of: Callable, params: Any, num_samples: int) -> Any:
    """∂ values_n / ∂θ, each leaf with a leading N axis. Forward mode costs P passes over the
    N samples and O(N·P) memory; reverse mode (jacrev) would vmap N cotangents, an N × N
    intermediate (1.6 GB at N = 20,000). Reverse only when P exceeds N."""
    size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
    jacobian = jax.jacfwd if size <= num_samples else jax.jacrev
    return jacobian(values_of)(params)


def grad(
    f: Callable,
    dist_fn: DistFn,
    params: Any,
    key: jax.Array,
    num_samples: int = 1000,
    *,
    estimator: str = "score",
    baseline: Any = None,
    control_variate: ControlVariate | None = None,
    standardize: bool = False,
    max_norm: float | None = None,
    nan_policy: str = "raise",
    per_sample: bool = False,
    vectorized: bool = False,
    validate: bool = True,
    temperature: float = 0.5,
    runtime_checks: bool = True,
) -> Any:
    r"""Estimate ∇θ E_{x~p_θ}[f(x)] in one call, for a JAX-traceable f.

    ``estimator="score"`` composes ``scorefn.sample``, ``jax.vmap(f)`` and
    ``scorefn.score_grad`` (f need not be differentiable); ``estimator="pathwise"`` is
    ``pathwise_grad`` (f differentiable, reparameterisable distribution);
    ``estimator="measure_valued"`` is ``scorefn.measure_valued.measure_valued_grad``
    (Normal, Poisson, Bernoulli; f need not be differentiable). For discrete distributions
    (``scorefn.discrete``): ``"rloo"`` is ``"score"`` with the leave-one-out baseline;
    ``"arm"`` and ``"disarm"`` are the antithetic Bernoulli estimators (unbiased,
    ``num_samples`` evaluations = ``num_samples // 2`` pairs); ``"sum_and_sample"`` sums the
    k - 1 most probable classes of a Categorical and samples one more (unbiased, k =
    ``num_samples`` evaluations); ``"rebar"`` is REBAR with its control variate's η = 1 and
    τ = ``temperature`` held fixed (unbiased; to learn them, or RELAX's network, use
    ``scorefn.discrete.Relax`` with its state); ``"gumbel_softmax"`` and
    ``"straight_through"`` are the **biased** relaxations with ``temperature``. jit- and
    vmap-compatible; the same key gives the same bits. See ``score_grad`` for the options.
    Each estimator takes those its entry in ``scorefn.registry`` lists
    (``Estimator.options``; ``validate`` and ``runtime_checks`` every one) and refuses the
    others by name: a temperature given to ``"score"`` is an error, not ignored.

    For example:

    ```python
    g = scorefn.grad(lambda x: jnp.sum(x**2), dist_fn, params, jax.random.key(0),
                     num_samples=1000, baseline=scorefn.baselines.leave_one_out())
    ```
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    entry = registry.ESTIMATORS[estimator]
    validation.check_float_params(params)
    validation.check_distribution(dist_fn(params))
    if entry.learned:
        raise ValueError(
            f"estimator={estimator!r} learns a control-variate network, which needs state: use "
            f"r = scorefn.discrete.{estimator}(network); state = r.init(key, dist_fn(params)); "
            "g, state = r.grad(f, dist_fn, params, key, num_samples, state)"
        )
    options = {"baseline": baseline, "control_variate": control_variate,
               "standardize": standardize, "max_norm": max_norm, "nan_policy": nan_policy,
               "per_sample": per_sample, "vectorized": vectorized, "temperature": temperature}
    given = {name: value for name, value in options.items()
             if not _is_default(value, registry.GRAD_OPTIONS[name])}
    for name in given:
        if name not in entry.options:
            raise ValueError(_refusal(estimator, name))
    if control_variate is not None and not isinstance(control_variate, ControlVariate):
        raise TypeError(
            "control_variate must come from scorefn.control_variates (generic, score, "
            f"delta_method); got {type(control_variate).__name__}")
    return ONE_DISTRIBUTION[entry.family](estimator, f, dist_fn, params, key, num_samples,
                                          validate=validate, runtime_checks=runtime_checks,
                                          **given)


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (isinstance(value, str | bool | int | float | np.generic)
                                and value == default)


def _refusal(estimator: str, option: str) -> str:
    """Why ``grad`` refuses ``option`` for ``estimator``, and which estimators take it."""
    if estimator == "rloo" and option == "baseline":
        return ("estimator='rloo' is 'score' with the leave-one-out baseline: pass no baseline "
                "(or use estimator='score' with your baseline)")
    if option in ("baseline", "standardize"):
        return ("baselines and standardize apply to the score-function estimator; "
                f"estimator={estimator!r} takes none of them")
    if option == "control_variate":
        return ("control variates apply to the score-function, pathwise and measure-valued "
                f"estimators; estimator={estimator!r} takes none")
    takers = [e.name for e in registry.ESTIMATORS.values() if option in e.options]
    taken = registry.ESTIMATORS[estimator].options
    return (f"estimator={estimator!r} takes no {option} (the estimators that do: "
            f"{', '.join(takers)}); of grad's options it takes "
            f"{', '.join(taken) if taken else 'none'}")


# How ``grad`` runs each family of ``scorefn.registry`` for one distribution: ``run(estimator,
# f, dist_fn, params, key, num_samples, *, validate, runtime_checks, **options)``, options
# being those of the estimator's registry entry that the caller gave. A program's site of the
# same family runs the same functions of ``scorefn.discrete`` and ``scorefn.measure_valued``
# (``programs.families``); for the score family, ARM, DisARM, REBAR and the relaxations a
# one-site program on the same draws gives the same estimate (tested).


def _score_family(estimator, f, dist_fn, params, key, num_samples, *, validate, runtime_checks,
                  vectorized=False, **options):
    if estimator == "rloo":
        options["baseline"] = leave_one_out()
    samples = sample(dist_fn, params, key, num_samples)
    values = f_values(f, samples, vectorized)
    return score_grad(dist_fn, params, samples, values, validate=validate,
                      samples_from_dist=True, runtime_checks=runtime_checks, **options)


def _control_variate_family(estimator, f, dist_fn, params, key, num_samples, *, validate,
                            runtime_checks, temperature=0.5):
    cv = rebar(temperature=temperature)
    state = cv.init(key, dist_fn(params))
    return cv.grad(f, dist_fn, params, key, num_samples, state, train=False,
                   runtime_checks=runtime_checks)[0]


def _calling(function: Callable, *, named: bool = False) -> Callable:
    """A family's function as ``grad`` runs it (``named``: it takes ``estimator=``)."""
    def run(estimator, f, dist_fn, params, key, num_samples, *, validate, **options):
        if named:
            options["estimator"] = estimator
        return function(f, dist_fn, params, key, num_samples, **options)

    return run


ONE_DISTRIBUTION: dict[str, Callable] = {
    "score": _score_family,
    "pathwise": _calling(pathwise_grad),
    "measure_valued": _calling(measure_valued_grad),
    "antithetic": _calling(antithetic_grad, named=True),
    "enumerate": _calling(sum_and_sample_grad),  # sum-and-sample, its one-distribution member
    "control_variate": _control_variate_family,
    "relaxed": _calling(relaxed_grad, named=True),
}
