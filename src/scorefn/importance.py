r"""Importance sampling for score-function gradients: samples from q, gradient under p_θ.

With x_n ~ q (a behaviour or proposal distribution) and log-weights
ℓ_n = log p_θ(x_n) - log q(x_n), computed in log space,

    ordinary         ĝ = (1/N) Σ_n w_n (f_n - b_n) g_n                        unbiased
    self-normalised  ĝ = Σ_n (w_n / Σ_m w_m) (f_n - b_n) g_n                  biased, O(1/N), consistent
    truncated        ĝ = (1/N) Σ_n min(w_n, c) (f_n - b_n) g_n                biased (downweights where p ≫ q)

where g_n = ∇θ log p_θ(x_n) and w_n = exp(ℓ_n), since E_q[w f g] = E_p[f g] = ∇θ E_p[f] when q > 0
wherever p f > 0. Multiple importance sampling (``mis_score_grad``) combines samples from
several proposals q_i with the balance or power heuristic. ``per_decision_log_weights``
gives the cumulative per-step weights of sequences (trajectories), optionally truncated per
step as V-trace and Retrace do. ``effective_sample_size`` measures weight degeneracy;
the estimators warn or raise (your choice) below a threshold, and overflowing weights raise
instead of returning NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from numpyro.distributions import Distribution

from scorefn import guards, validation
from scorefn.baselines import as_baseline
from scorefn.estimators import score_grad
from scorefn.scores import joint_log_prob, log_prob
from scorefn.types import DistFn

WEIGHTINGS = ("ordinary", "self_normalized", "truncated")
ESS_POLICIES = ("warn", "raise", "ignore")


def effective_sample_size(log_weights: jax.Array) -> jax.Array:
    r"""Kish's ESS = (Σ w)² / Σ w², from log-weights, without overflow. Equals N when all
    weights are equal (q = p) and tends to 1 when one weight dominates."""
    log_weights = jnp.asarray(log_weights)
    shifted = log_weights - jax.lax.stop_gradient(jnp.max(log_weights))  # keeps float32 precise
    return jnp.exp(2 * logsumexp(shifted) - logsumexp(2 * shifted))


def clipped_objective(log_weights: jax.Array, advantages: jax.Array,
                      clip: tuple[float, float] | None = None) -> jax.Array:
    r"""PPO's clipped importance-weighted objective, elementwise (Schulman et al. 2017):

    $$
    o = \min\big(\rho A,\ \operatorname{clip}(\rho, 1 - \epsilon_{low}, 1 + \epsilon_{high})\, A\big),
      \qquad \rho = e^{\ell},
    $$

    with ℓ = log π_θ(x) - log μ(x) the log-weight of a sample x ~ μ and A its advantage
    (a constant: not differentiated). Its gradient is ρ A ∇θ log π_θ(x) where the clip does not
    bind and 0 where it does (ρ > 1 + ε_high with A > 0, or ρ < 1 - ε_low with A < 0), so that
    E_μ[∇o] = ∇θ E_π[A] = E_π[A ∇ log π] when nothing binds. ``clip=None``: o = ρ A, the
    unclipped importance-weighted objective. With ℓ = log π - stop_gradient(log π), ρ = 1
    and ∇o = A ∇ log π: the on-policy score-function term. Asymmetric ε_low, ε_high as in
    DAPO's clip-higher (Yu et al. 2025).
    """
    log_weights = jnp.asarray(log_weights)
    advantages = jax.lax.stop_gradient(jnp.asarray(advantages))
    ratio = jnp.exp(log_weights)
    if clip is None:
        return ratio * advantages
    low, high = clip
    return jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - low, 1.0 + high) * advantages)


def clip_binds(log_weights: jax.Array, advantages: jax.Array,
               clip: tuple[float, float]) -> jax.Array:
    """Where ``clipped_objective``'s clip binds (its gradient is zero there), elementwise."""
    ratio = jnp.exp(jnp.asarray(log_weights))
    low, high = clip
    advantages = jnp.asarray(advantages)
    return ((ratio > 1.0 + high) & (advantages > 0)) | ((ratio < 1.0 - low) & (advantages < 0))


def log_mean_weight(log_weights: jax.Array) -> jax.Array:
    r"""L̂ = log (1/K) Σ_k w_k over the first axis, stably: the multi-sample (importance
    weighted) bound's estimate when w_k = p(x, z_k)/q(z_k) (Burda et al. 2016), an unbiased
    estimate of L_K ≤ log p(x)."""
    log_weights = jnp.asarray(log_weights)
    return logsumexp(log_weights, axis=0) - jnp.log(log_weights.shape[0])


def self_normalized_weights(log_weights: jax.Array) -> jax.Array:
    """w̃_k = w_k / Σ_m w_m over the first axis (a softmax of the log-weights)."""
    return jax.nn.softmax(jnp.asarray(log_weights), axis=0)


def doubly_reparameterized_weights(log_weights: jax.Array) -> jax.Array:
    r"""w̃_k², the weights of the path term in DReG (Tucker et al. 2019, eq. 7):
    ∇ L_K = E[Σ_k w̃_k² ∂ log w_k/∂z_k ∂z_k/∂φ] for reparameterised z_k, whose variance,
    unlike the plain gradient's, does not grow with K."""
    return self_normalized_weights(log_weights) ** 2


def weight_diagnostics(log_weights: jax.Array) -> dict[str, jax.Array]:
    """ESS, ESS / N, the largest normalised weight and the largest log-weight."""
    log_weights = jnp.asarray(log_weights)
    ess = effective_sample_size(log_weights)
    return {
        "ess": ess,
        "ess_fraction": ess / log_weights.shape[0],
        "max_normalized_weight": jnp.exp(jnp.max(log_weights) - logsumexp(log_weights)),
        "max_log_weight": jnp.max(log_weights),
    }


def _behaviour_log_prob(behaviour: Any, samples: jax.Array, num_samples: int) -> jax.Array:
    if isinstance(behaviour, Distribution):
        return joint_log_prob(behaviour, samples)
    log_q = jnp.asarray(behaviour)
    if log_q.shape != (num_samples,):
        raise ValueError(
            "behaviour must be a numpyro Distribution (the proposal q) or the stored log q(x_n) "
            f"of each sample, shape (num_samples,) = ({num_samples},); got shape {log_q.shape}"
        )
    return log_q


def log_weights(dist_fn: DistFn, params: Any, samples: jax.Array, behaviour: Any) -> jax.Array:
    """ℓ_n = log p_θ(x_n) - log q(x_n), shape (N,); ``behaviour`` is q or stored log q."""
    num_samples = validation.check_samples_shape(dist_fn(params), samples)
    log_q = _behaviour_log_prob(behaviour, samples, num_samples)
    return jax.lax.stop_gradient(joint_log_prob(dist_fn(params), samples)) - log_q


def log_weights_per_factor(d: Distribution, value: jax.Array, behaviour_log_prob: jax.Array
                           ) -> jax.Array:
    """ℓ = log p(value) - log q(value) for each independent factor of ``d`` (its batch shape),
    differentiable in ``d``'s parameters: one decision's importance log-weight in RL, where
    ``d`` is the policy π_θ(· | s) batched over states and ``behaviour_log_prob`` the log μ(a | s)
    stored when the action was taken. PPO's and TRPO's probability ratio ρ = π_θ/μ is exp(ℓ).
    log p goes through ``scores.log_prob`` (numpyro's logits-at-zero gradient fixed)."""
    return log_prob(d, value) - behaviour_log_prob


def _ess_check(log_w: jax.Array, threshold: float | None, policy: str,
               weights: jax.Array | None = None) -> jax.Array:
    """Warn or raise (``policy``) when the weights are degenerate: ESS / N < threshold, every
    weight zero, or (``weights`` given: the weights the estimate uses) every weight
    underflowing to 0, where the estimate would be an exact, meaningless 0. Returns a zero
    to add to the output."""
    dtype = jnp.result_type(float)
    if policy == "ignore":
        return jnp.zeros((), dtype)
    n = log_w.shape[0]
    threshold = 0.0 if threshold is None else threshold

    def message(lw, w):
        lw = np.asarray(lw, np.float64)
        m = lw.max()
        if not np.isfinite(m):
            return ("every importance weight is zero: p_θ(x) = 0 at all of the "
                    f"{n} samples of q (log p_θ(x) - log q(x) = -inf), so the estimate would be "
                    "an exact 0. q and p_θ do not overlap: sample closer to p_θ")
        if w is not None and not (np.asarray(w) > 0).any():
            return (f"every importance weight underflows to 0 in {np.asarray(w).dtype} (the "
                    f"largest log weight log p_θ(x) - log q(x) is {m:.1f}), so the estimate "
                    "would be an exact 0: use weighting='self_normalized', or a proposal closer "
                    "to p_θ")
        log_sum = m + np.log(np.exp(lw - m).sum())
        ess = np.exp(2 * log_sum - (2 * m + np.log(np.exp(2 * (lw - m)).sum())))
        if ess / n >= threshold:
            return None
        return (
            f"importance weights are degenerate: effective sample size {ess:.1f} of {n} "
            f"({100 * ess / n:.1f}% < threshold {100 * threshold:g}%); the largest weight "
            f"carries {100 * np.exp(m - log_sum):.0f}% of the total. The proposal q "
            "is far from p_θ: sample closer to p_θ, use self_normalized or truncated weights, or "
            "multiple proposals (mis_score_grad); ess_threshold sets the level, "
            "on_low_ess='raise' makes it an error"
        )

    def report(lw, w, stacklevel):
        text = message(lw, w)
        if text is not None:
            if policy == "raise":
                raise ValueError(text)
            warnings.warn(text, RuntimeWarning, stacklevel=stacklevel)
        return np.zeros((), dtype)

    if not validation.is_traced(log_w) and not validation.is_traced(weights):
        report(log_w, weights, stacklevel=4)
        return jnp.zeros((), dtype)

    def on_host(lw, w):
        return report(lw, None if w.ndim == 0 else w, stacklevel=3)

    ess = effective_sample_size(log_w)
    ok = jnp.isfinite(ess) & (ess >= threshold * n)
    if weights is not None:
        ok = ok & jnp.any(weights > 0)
    w_arg = jnp.zeros((), dtype) if weights is None else jax.lax.stop_gradient(weights)
    return jax.lax.cond(
        ok,
        lambda lw, w: jnp.zeros((), dtype),
        lambda lw, w: jax.pure_callback(on_host, jax.ShapeDtypeStruct((), dtype), lw, w,
                                        vmap_method="sequential"),
        log_w, w_arg,
    )


def _overflow_message(weights_and_log_weights: np.ndarray) -> str | None:
    weights, lw = weights_and_log_weights
    if np.all(np.isfinite(weights)):
        return None
    return (
        f"importance weights overflow: the largest log weight log p_θ(x) - log q(x) is "
        f"{float(np.nanmax(lw)):.1f}, and exp() of it is not finite in {weights.dtype}. q puts "
        "almost no mass where p_θ has it; use weighting='self_normalized' or 'truncated', or a "
        "proposal closer to p_θ"
    )


def is_score_grad(
    dist_fn: DistFn,
    params: Any,
    samples: jax.Array,
    values: jax.Array,
    behaviour: Any,
    *,
    weighting: str = "ordinary",
    truncation: float = 1.0,
    baseline: Any = None,
    ess_threshold: float | None = 0.05,
    on_low_ess: str = "warn",
    runtime_checks: bool = True,
) -> Any:
    r"""Off-policy score-function estimate of ∇θ E_{p_θ}[f] from samples of q.

    Args:
      samples: ``(N, ...)`` drawn from the behaviour distribution q, not from p_θ.
      values: ``(N,)``, f at each sample.
      behaviour: q as a numpyro Distribution, or the stored log q(x_n), shape (N,).
      weighting: ``"ordinary"`` (unbiased), ``"self_normalized"`` (biased O(1/N), lower
        variance, immune to the scale of the weights) or ``"truncated"`` (weights clipped at
        ``truncation`` as in PPO/V-trace/Retrace; biased towards zero where p ≫ q).
      baseline: as in ``scorefn.score_grad`` (per-sample baselines only); a baseline
        independent of x_n keeps the ordinary estimator unbiased.
      ess_threshold: warn (``on_low_ess="warn"``, the default) or raise (``"raise"``) when
        ESS/N falls below it (default 5%); every weight zero, or every weight underflowing to
        0 with ordinary or truncated weighting, is reported the same way at any threshold
        (the estimate would be an exact 0). ``on_low_ess="ignore"`` turns both off.
      runtime_checks: under ``jit``, the checks of values and weights run in the compiled
        program (as ``scorefn.score_grad``'s); False leaves them out (the ESS check follows
        ``on_low_ess``).

    Overflowing weights raise a ValueError instead of returning NaN. jit- and vmap-compatible.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if on_low_ess not in ESS_POLICIES:
        raise ValueError(f"on_low_ess must be one of {ESS_POLICIES}, got {on_low_ess!r}")
    if weighting == "truncated" and not truncation > 0:
        raise ValueError(f"truncation must be positive, got {truncation}")
    if ess_threshold is not None:  # a fraction of N: above 1 every call would be reported
        validation.check_real(ess_threshold, "ess_threshold", 0.0, 1.0)
    d = dist_fn(params)
    num_samples = validation.check_samples_shape(d, samples)
    values = validation.check_values_shape(values, num_samples).astype(jnp.result_type(float))
    validation.check_support_independent(dist_fn, params)
    validation.check_params_used(dist_fn, params, samples)
    baseline = as_baseline(baseline)
    if baseline is not None and baseline.per_coordinate:
        raise ValueError("is_score_grad takes per-sample baselines (constant, ema, leave_one_out)")
    log_q = _behaviour_log_prob(behaviour, samples, num_samples)
    log_w = jax.lax.stop_gradient(joint_log_prob(d, samples)) - log_q
    centred = values if baseline is None else values - baseline(values)
    if weighting == "self_normalized":
        weights = jnp.exp(log_w - logsumexp(log_w)) * num_samples
    elif weighting == "truncated":
        weights = jnp.exp(jnp.minimum(log_w, jnp.log(truncation)))
    else:
        weights = jnp.exp(log_w)
    # A sample outside p_θ's support has weight 0 and contributes nothing: not an error.
    ok = jnp.all(jnp.isfinite(values)) & jnp.all(jnp.isfinite(weights))
    guard = guards.finite_guard(
        (values, guards.nonfinite_values_message),
        (jnp.stack([weights, log_w]), _overflow_message),
        ok=ok, enabled=runtime_checks,
    )
    guard = guard + _ess_check(log_w, ess_threshold, on_low_ess,
                               None if weighting == "self_normalized" else weights)
    return _weighted_score_grad(dist_fn, params, samples, weights * centred, guard,
                                runtime_checks)


def _weighted_score_grad(dist_fn, params, samples, coefficients, guard, runtime_checks) -> Any:
    """(1/N) Σ_n c_n ∇θ log p_θ(x_n) through the core's ``scorefn.score_grad``, the
    weights already checked by ``guard`` (non-finite ones are zeroed so that the guard's
    message, not the core's generic one, reports them)."""
    coefficients = jnp.where(jnp.isfinite(coefficients), coefficients, 0.0)
    estimate = score_grad(dist_fn, params, samples, coefficients, validate=False,
                          samples_from_dist=True, runtime_checks=runtime_checks)
    return jax.tree.map(lambda g: g + guard.astype(g.dtype), estimate)


def mis_score_grad(
    dist_fn: DistFn,
    params: Any,
    samples: Sequence[jax.Array],
    values: Sequence[jax.Array],
    proposals: Sequence[Distribution],
    *,
    heuristic: str = "balance",
    power: float = 2.0,
    runtime_checks: bool = True,
) -> Any:
    r"""Multiple importance sampling over proposals q_1..q_J with n_j samples each:

    $$
    \hat g = \sum_j \frac{1}{n_j} \sum_k h_j(x_{jk})\, \frac{p_\theta(x_{jk})}{q_j(x_{jk})}\, f(x_{jk})\,
      \nabla_\theta \log p_\theta(x_{jk})
    $$

    with the balance heuristic h_j(x) = n_j q_j(x) / Σ_i n_i q_i(x) (Veach & Guibas 1995),
    under which each term is p_θ(x) f g / Σ_i n_i q_i(x): the mixture density; or the power
    heuristic h_j ∝ (n_j q_j)^β. Unbiased for any heuristic whose h_j sum to one wherever
    p f ≠ 0. All weights are formed with logsumexp. ``runtime_checks``: as
    ``scorefn.score_grad``'s (False: no host callback under ``jit``).
    """
    if heuristic not in ("balance", "power"):
        raise ValueError(f"heuristic must be 'balance' or 'power', got {heuristic!r}")
    if heuristic == "power":  # any finite β keeps the weights summing to one
        validation.check_real(power, "power")
    if not (len(samples) == len(values) == len(proposals)) or not proposals:
        raise ValueError(
            "samples, values and proposals must be sequences of the same non-zero length, one "
            f"entry per proposal; got {len(samples)}, {len(values)} and {len(proposals)}"
        )
    counts = [validation.check_samples_shape(dist_fn(params), x) for x in samples]
    values = [validation.check_values_shape(f, n).astype(jnp.result_type(float))
              for f, n in zip(values, counts)]
    log_counts = jnp.log(jnp.asarray(counts, jnp.result_type(float)))
    coefficients, stacked_samples = [], []
    for j, (x, f) in enumerate(zip(samples, values)):
        log_q_all = jnp.stack([joint_log_prob(q, x) for q in proposals], axis=0)  # (J, n)
        log_p = jax.lax.stop_gradient(joint_log_prob(dist_fn(params), x))
        if heuristic == "balance":
            # h_j p / (n_j q_j) = p / Σ_i n_i q_i: the mixture density, whatever j is.
            log_weight = log_p - logsumexp(log_q_all + log_counts[:, None], axis=0)
        else:
            scaled = power * (log_q_all + log_counts[:, None])
            log_h = scaled[j] - logsumexp(scaled, axis=0)
            log_weight = log_h + log_p - log_q_all[j] - log_counts[j]
        coefficients.append(jnp.exp(log_weight) * f)
        stacked_samples.append(x)
    coefficients = jnp.concatenate(coefficients)
    all_samples = jnp.concatenate(stacked_samples)
    guard = guards.finite_guard(*[(f, guards.nonfinite_values_message) for f in values],
                                (coefficients, _nonfinite_weights_message),
                                enabled=runtime_checks)
    # The estimator is a sum over all samples, not a mean: scale by their number.
    return _weighted_score_grad(dist_fn, params, all_samples,
                                coefficients * all_samples.shape[0], guard, runtime_checks)


def _nonfinite_weights_message(coefficients: np.ndarray) -> str | None:
    if np.all(np.isfinite(coefficients)):
        return None
    return ("multiple-importance weights are not finite: some sample has zero density under "
            "every proposal or overflows; check the proposals cover p_θ")


def per_decision_log_weights(
    log_p: jax.Array, log_q: jax.Array, truncation: float | None = None
) -> jax.Array:
    r"""Cumulative per-decision log-weights of sequences, shape (N, T):

    $$
    \log \rho_{1:t} = \sum_{k \le t} \log \min\left(\bar c,\ \pi(a_k \mid s_k) / \mu(a_k \mid s_k)\right)
    $$

    from per-step log-probabilities under the target π and the behaviour μ, shape (N, T).
    Without truncation E_μ[ρ_{1:t} h(a_{1:t})] = E_π[h(a_{1:t})] for any h of the prefix, so
    the reward at step t needs only the weights up to t (Precup et al. 2000). With
    ``truncation`` c̄ each step's ratio is clipped at c̄, as V-trace (Espeholt et al. 2018)
    and Retrace (Munos et al. 2016) do: lower variance, biased.
    """
    log_p, log_q = jnp.asarray(log_p), jnp.asarray(log_q)
    if log_p.shape != log_q.shape or log_p.ndim != 2:
        raise ValueError(
            "log_p and log_q must both have shape (num_sequences, num_steps); "
            f"got {log_p.shape} and {log_q.shape}"
        )
    step = log_p - log_q
    if truncation is not None:
        step = jnp.minimum(step, jnp.log(truncation))
    return jnp.cumsum(step, axis=1)
