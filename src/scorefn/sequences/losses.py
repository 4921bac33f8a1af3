r"""Sequence-level policy-gradient losses: REINFORCE with RLOO, GRPO, Dr. GRPO, REINFORCE++,
DAPO and GSPO as independent choices, with KL penalties.

The objective is the expected reward of a completion y of each prompt x, maximised:
\(J(\theta) = \mathbb{E}_x\, \mathbb{E}_{y \sim \pi_\theta(\cdot \mid x)}[R(x, y)]\). A batch holds G
groups of K completions of one prompt (rows g·K … g·K+K-1). Every loss here has the form

$$
L = -\sum_{i=1}^{B} \sum_{t=1}^{T} w_{it}\, m_{it}\, o_{it}
    + \beta \sum_{i,t} w_{it}\, m_{it}\, \hat k_{it}\ [\text{KL in the loss}],
\qquad o_{it} = \min\big(\rho_{it} A_i,\ \operatorname{clip}(\rho_{it})\, A_i\big),
$$

with m the mask, A_i the sequence's advantage (``advantage``), w the aggregation weights
(``aggregation``), ρ the importance ratio (``ratio``; ρ = 1 with gradient ∇ log π on policy)
and k̂ a KL estimate (``kl_estimator``). On policy and without clipping, −∇L is the
score-function estimate Σ_{i,t} w_it m_it A_i ∇ log π_θ(y_it | x_i, y_i,<t). What each choice's
expectation is, exactly, is stated at ``loss``; ``scorefn.sequences.TabularPolicy`` checks each
by enumeration.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import guards, validation
from scorefn.baselines import batch_mean, leave_one_out
from scorefn.divergences import KL_ESTIMATORS, kl_estimate
from scorefn.estimators import standardized
from scorefn.importance import clip_binds, clipped_objective, effective_sample_size

ADVANTAGES = ("none", "rloo", "grpo", "dr_grpo", "reinforce_pp")
AGGREGATIONS = ("sequence_sum", "sequence_mean", "token_mean", "token_mean_per_group",
                "constant")
RATIOS = ("token", "sequence")
KL_PLACES = ("reward", "loss")


def _grouped(values: jax.Array, group_size: int) -> jax.Array:
    """[B] → [K, G]: the samples of each group along axis 0, as the core baselines expect."""
    return values.reshape(-1, group_size).T


def _ungrouped(values: jax.Array) -> jax.Array:
    return values.T.reshape(-1)


def group_advantages(rewards: jax.Array, group_size: int, advantage: str = "rloo",
                     std_eps: float = 1e-4) -> jax.Array:
    r"""Each sequence's advantage A_i from the rewards of its group (K = ``group_size``):

    - ``"none"``: A_i = r_i.
    - ``"rloo"``: A_i = r_i − (1/(K−1)) Σ_{j≠i} r_j, the leave-one-out baseline (Kool et al.
      2019; Ahmadian et al. 2024), ``baselines.leave_one_out`` per group.
    - ``"dr_grpo"``: A_i = r_i − r̄_g, the group mean including r_i (Liu et al. 2025):
      ((K−1)/K) times RLOO's advantage, exactly (``baselines.batch_mean`` per group).
    - ``"grpo"``: A_i = (r_i − r̄_g) / (σ_g + ε), σ_g the group's std with ddof=1 (torch's
      default, as TRL), ε = ``std_eps`` (Shao et al. 2024).
    - ``"reinforce_pp"``: A_i = c_i / (σ_B + ε), c_i = r_i − r̄_g, σ_B the std of c over the
      whole batch (ddof=0): REINFORCE++ with the group baseline (Hu et al. 2025).

    A group whose rewards are all equal gets A = 0 under every choice but ``"none"`` (no NaN).
    """
    rewards = jnp.asarray(rewards)
    if not validation.is_traced(std_eps):  # a negative ε can divide by zero, a NaN spreads
        validation.check_real(std_eps, "std_eps", 0.0)
    if advantage == "none":
        return rewards
    grouped = _grouped(rewards, group_size)
    if advantage == "rloo":
        return _ungrouped(grouped - leave_one_out()(grouped))
    centred = grouped - batch_mean()(grouped)
    if advantage == "dr_grpo":
        return _ungrouped(centred)
    if advantage == "grpo":
        per_group = jax.vmap(lambda r: standardized(r, eps=std_eps, ddof=1), in_axes=1, out_axes=1)
        return _ungrouped(per_group(grouped))
    if advantage == "reinforce_pp":
        return standardized(_ungrouped(centred), eps=std_eps)
    raise ValueError(f"advantage must be one of {ADVANTAGES} or an array, got {advantage!r}")


def token_weights(mask: jax.Array, group_size: int, aggregation: str = "sequence_sum") -> jax.Array:
    r"""The aggregation weights w_it [B, T] (constants; m is the mask, |y_i| = Σ_t m_it):

    - ``"sequence_sum"``: 1/B: sum over a sequence's tokens, mean over sequences.
    - ``"sequence_mean"``: 1/(B |y_i|): GRPO's mean over a sequence's tokens, then over sequences.
    - ``"token_mean"``: 1/Σ_{j,t} m_jt: DAPO's mean over all tokens of the batch (verl's default).
    - ``"token_mean_per_group"``: 1/(G Σ_{j∈g,t} m_jt): the mean over each group's tokens,
      then over groups (DAPO per prompt, as TRL computes it).
    - ``"constant"``: 1/(B T): Dr. GRPO's sum over tokens divided by ``max_new_tokens`` = T.

    Sequences or groups with no token get weight 0 (no division by zero).
    """
    mask = jnp.asarray(mask).astype(jnp.float32)
    rows, steps = mask.shape
    ones = jnp.ones_like(mask)
    if aggregation == "sequence_sum":
        return ones / rows
    if aggregation == "constant":
        return ones / (rows * steps)
    if aggregation == "sequence_mean":
        lengths = jnp.sum(mask, axis=1, keepdims=True)
        return ones / (rows * jnp.maximum(lengths, 1.0))
    if aggregation == "token_mean":
        return ones / jnp.maximum(jnp.sum(mask), 1.0)
    if aggregation == "token_mean_per_group":
        groups = rows // group_size
        per_group = jnp.sum(mask.reshape(groups, -1), axis=1)
        count = jnp.repeat(per_group, group_size)[:, None]
        return ones / (groups * jnp.maximum(count, 1.0))
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def _check_options(advantage, aggregation, ratio, clip, kl_estimator, kl_in, group_size, rows,
                   ref_logp, kl_coef, entropy_coef):
    validation.check_int(group_size, "group_size")
    if not validation.is_traced(entropy_coef):  # a NaN would make the loss NaN
        validation.check_real(entropy_coef, "entropy_coef")
    if rows % group_size:
        raise ValueError(f"the batch has {rows} sequences, not a multiple of group_size="
                         f"{group_size}")
    if isinstance(advantage, str):
        if advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {ADVANTAGES} or an array, got {advantage!r}")
        if advantage in ("rloo", "grpo", "dr_grpo", "reinforce_pp") and group_size < 2:
            raise ValueError(f"advantage={advantage!r} compares the samples of a group: it needs "
                             f"group_size >= 2, got {group_size}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    if clip is not None:
        if (not isinstance(clip, (tuple, list)) or len(clip) != 2
                or not all(isinstance(c, (int, float)) and 0 <= c for c in clip)
                or not clip[0] < 1):
            raise ValueError(f"clip must be None or (eps_low, eps_high) with 0 <= eps_low < 1 "
                             f"and eps_high >= 0, got {clip!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if kl_in not in KL_PLACES:
        raise ValueError(f"kl_in must be one of {KL_PLACES}, got {kl_in!r}")
    validation.check_real(kl_coef, "kl_coef", 0.0)
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp, the reference policy's log-probabilities "
                         "of the same tokens")


def _check_array(name: str, value: Any, shape: tuple[int, ...]) -> jax.Array:
    value = jnp.asarray(value)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    return value


def _nonfinite_message(name: str, what: str) -> Any:
    def message(values: np.ndarray) -> str | None:
        bad = np.argwhere(~np.isfinite(values) | (values > 1e-4 if what == "logp" else False))
        if not bad.size:
            return None
        where = ", ".join(str(tuple(int(i) for i in b)) for b in bad[:5])
        if what == "logp" and np.all(np.isfinite(values)):
            return (f"{name} holds a value > 0 where the mask is 1 (at {where}): pass "
                    "log-probabilities (sequences.log_probs), not logits or probabilities")
        return f"{name} holds a non-finite value where it counts (at {where})"
    return message


def loss_and_metrics(
    logp: jax.Array, rewards: jax.Array, mask: jax.Array, *, group_size: int,
    advantage: str | jax.Array = "rloo", aggregation: str = "sequence_sum",
    behaviour_logp: jax.Array | None = None, clip: tuple[float, float] | None = None,
    ratio: str = "token", ref_logp: jax.Array | None = None, kl_coef: float = 0.0,
    kl_estimator: str = "k1", kl_in: str = "reward", entropy_coef: float = 0.0,
    std_eps: float = 1e-4, runtime_checks: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``loss`` and its metrics, for ``jax.value_and_grad(..., has_aux=True)``.

    Metrics (scalars): ``reward`` (mean), ``advantage_abs`` (mean |A|), ``length`` (mean |y|),
    ``zero_variance_groups`` (groups whose rewards are all equal: no signal), ``kl`` (the
    mean per-sequence KL estimate, when ``ref_logp`` is given), ``clip_fraction`` (of tokens,
    or sequences for ``ratio="sequence"``, where the clip binds), ``ess_fraction`` (the
    effective sample size of the sequence importance weights over B), ``entropy`` (the mean
    of −log π(y), an estimate of the sequence entropy).
    """
    logp = jnp.asarray(logp)
    if logp.ndim != 2:
        raise ValueError(f"logp must have shape (B, T), got {logp.shape}")
    rows, steps = logp.shape
    rewards = _check_array("rewards", rewards, (rows,))
    mask = _check_array("mask", mask, (rows, steps))
    _check_options(advantage, aggregation, ratio, clip, kl_estimator, kl_in, group_size, rows,
                   ref_logp, kl_coef, entropy_coef)
    on = mask.astype(bool)
    zero = jnp.zeros((), logp.dtype)

    def masked(name: str, value: Any) -> jax.Array:
        # jnp.where, not a product: a NaN where the mask is 0 must not reach the gradient.
        return jnp.where(on, _check_array(name, value, (rows, steps)), zero)

    logp = masked("logp", logp)
    sg = jax.lax.stop_gradient  # the checks read values only: no derivative through them
    checks = [(sg(rewards), _nonfinite_message("rewards", "value")),
              (sg(logp), _nonfinite_message("logp", "logp"))]
    ok = sg(jnp.all(jnp.isfinite(rewards)) & jnp.all(jnp.isfinite(logp)) & jnp.all(logp <= 1e-4))
    if behaviour_logp is not None:
        behaviour_logp = jax.lax.stop_gradient(masked("behaviour_logp", behaviour_logp))
        checks.append((behaviour_logp, _nonfinite_message("behaviour_logp", "logp")))
        ok = ok & jnp.all(jnp.isfinite(behaviour_logp)) & jnp.all(behaviour_logp <= 1e-4)
    if ref_logp is not None:
        ref_logp = jax.lax.stop_gradient(masked("ref_logp", ref_logp))
        checks.append((ref_logp, _nonfinite_message("ref_logp", "logp")))
        ok = ok & jnp.all(jnp.isfinite(ref_logp)) & jnp.all(ref_logp <= 1e-4)
    guard = guards.finite_guard(*checks, ok=ok, enabled=runtime_checks)

    lengths = jnp.sum(on, axis=1)
    metrics: dict[str, jax.Array] = {"reward": jnp.mean(rewards), "length": jnp.mean(lengths)}
    shaped = rewards
    kl_tokens = None
    if ref_logp is not None:
        kl_tokens = jnp.where(on, kl_estimate(logp, ref_logp, kl_estimator), zero)
        sequence_kl = jax.lax.stop_gradient(jnp.sum(kl_tokens, axis=1))
        metrics["kl"] = jnp.mean(sequence_kl)
        if kl_in == "reward":
            shaped = shaped - kl_coef * sequence_kl
    sequence_logp = jax.lax.stop_gradient(jnp.sum(logp, axis=1))
    metrics["entropy"] = -jnp.mean(sequence_logp)
    if entropy_coef:
        shaped = shaped - entropy_coef * sequence_logp

    if isinstance(advantage, str):
        adv = group_advantages(jax.lax.stop_gradient(shaped), group_size, advantage, std_eps)
    else:
        adv = jnp.asarray(advantage)
        if adv.shape not in ((rows,), (rows, steps)):
            raise ValueError(f"an advantage array must have shape ({rows},) or ({rows}, {steps}), "
                             f"got {adv.shape}")
    adv = jax.lax.stop_gradient(adv)
    token_adv = adv if adv.ndim == 2 else jnp.broadcast_to(adv[:, None], (rows, steps))
    grouped = rewards.reshape(-1, group_size)
    metrics["zero_variance_groups"] = jnp.sum(jnp.all(grouped == grouped[:, :1], axis=1))
    metrics["advantage_abs"] = jnp.mean(jnp.abs(token_adv[:, 0]))

    behaviour = jax.lax.stop_gradient(logp) if behaviour_logp is None else behaviour_logp
    log_w = jnp.where(on, logp - behaviour, zero)
    sequence_log_w = jnp.sum(log_w, axis=1)
    metrics["ess_fraction"] = effective_sample_size(jax.lax.stop_gradient(sequence_log_w)) / rows
    if ratio == "sequence":
        # GSPO: s_i = (π(y_i)/μ(y_i))^{1/|y_i|}, the same for every token of the sequence.
        per_sequence = sequence_log_w / jnp.maximum(lengths, 1)
        log_w = jnp.broadcast_to(per_sequence[:, None], (rows, steps))
    objective = clipped_objective(log_w, token_adv, clip)
    if clip is not None:
        binds = clip_binds(jax.lax.stop_gradient(log_w), token_adv, clip)
        if ratio == "sequence":
            metrics["clip_fraction"] = jnp.mean(binds[:, 0] & (lengths > 0))
        else:
            metrics["clip_fraction"] = jnp.sum(binds & on) / jnp.maximum(jnp.sum(on), 1)

    weights = jnp.where(on, token_weights(mask, group_size, aggregation), zero)
    total = -jnp.sum(weights * jnp.where(on, objective, zero))
    if kl_tokens is not None and kl_in == "loss":
        total = total + kl_coef * jnp.sum(weights * kl_tokens)
    return guards.guarded(total, guard), metrics


def loss(
    logp: jax.Array, rewards: jax.Array, mask: jax.Array, *, group_size: int,
    advantage: str | jax.Array = "rloo", aggregation: str = "sequence_sum",
    behaviour_logp: jax.Array | None = None, clip: tuple[float, float] | None = None,
    ratio: str = "token", ref_logp: jax.Array | None = None, kl_coef: float = 0.0,
    kl_estimator: str = "k1", kl_in: str = "reward", entropy_coef: float = 0.0,
    std_eps: float = 1e-4, runtime_checks: bool = True,
) -> jax.Array:
    r"""A scalar to minimise whose gradient is the chosen estimate of −∇J.

    ``logp`` [B, T]: log π_θ of the completions' tokens (``log_probs``, differentiable);
    ``rewards`` [B]; ``mask`` [B, T]; rows g·K … g·K+K−1 form group g (K = ``group_size``).
    Positions where the mask is 0 affect nothing, whatever they hold (NaN included).
    ``advantage`` (``group_advantages``), ``aggregation`` (``token_weights``):

    **Expectations on policy** (y_1..K i.i.d. from π_θ(·|x); s(y) = ∇ log π_θ(y|x); the
    expectation of −∇L, per prompt and averaged over prompts):

    - ``none`` or ``rloo`` × ``sequence_sum``: ∇J, unbiased.
    - ``dr_grpo`` × ``sequence_sum``: ((K−1)/K) ∇J.
    - any advantage × ``constant``: (1/T) times its ``sequence_sum`` value.
    - ``none`` × ``sequence_mean``: ∇_φ E_{π_φ}[R/|y|] at φ = θ, the gradient of the
      length-normalised reward.
    - ``rloo`` × ``sequence_mean``: ∇_φ E_{π_φ}[R/|y|] − J ∇_φ E_{π_φ}[1/|y|], GRPO's length
      bias (Liu et al. 2025); ``dr_grpo`` × ``sequence_mean``: (K−1)/K times that.
    - ``grpo``, ``reinforce_pp``, ``token_mean``, ``token_mean_per_group``: E[Σ_{i,t} w_it A_i
      ∇ log π_it] with the group's std or the token count inside: no closed form in ∇J (a
      multiple of it only when every length is the same, for the token means).

    The biased choices are what the papers and frameworks do; they are named options, and their
    exact expectations on a small model are tabulated in the docs.

    **Off policy** (``behaviour_logp``: samples from μ; per-token ρ_t = π_θ/μ at that token, or
    GSPO's s_i = (π_θ(y_i)/μ(y_i))^{1/|y_i|} with ``ratio="sequence"``): with ``clip=None`` the
    token ratio estimates E_μ[Σ_t ρ_t A ∇ log π_t], which is *not* ∇J (the exact off-policy
    gradient needs the ratio of the whole prefix, ``importance.per_decision_log_weights``);
    it is ∇J when μ = π_θ. ``clip=(ε_low, ε_high)``: PPO's clipped ratio per token, or per
    sequence (GSPO, with ``aggregation="sequence_mean"`` as in its paper); the gradient is zero
    where the clip binds (``importance.clipped_objective``). Biased, by design.

    **KL penalty** (``ref_logp``, β = ``kl_coef``; k̂ per token from ``divergences.kl_estimate``),
    the expectation of the penalty's part of −∇L:

    - ``kl_in="reward"``, ``k1``: −β ∇ KL(π_θ ‖ π_ref); with ``rloo`` or ``none`` ×
      ``sequence_sum`` the loss estimates ∇(J − β KL), unbiased.
    - ``kl_in="reward"``, ``k2`` or ``k3``: −β E[k̂(y) s(y)], the score term of ∇ E[k̂] alone
      (biased for ∇KL).
    - ``kl_in="loss"``, ``k1``: 0, since E[Σ_t ∇ log π_t] = 0: the penalty does nothing in
      expectation.
    - ``kl_in="loss"``, ``k2``: −β E[Σ_t (log π_t − log π_ref,t) ∇ log π_t], the per-token part
      of ∇KL with the future terms dropped.
    - ``kl_in="loss"``, ``k3``: −β E[Σ_t ∇_θ KL(π_ref(·|s_t) ‖ π_θ(·|s_t))], the reverse KL of
      each step's conditional with the states held fixed (Tang & Munos 2025).

    (k̂ inside the loss is aggregated with the same weights as the policy term; the list is
    for ``sequence_sum``.) ``entropy_coef`` α adds α · (−log π(y)) to the reward (stop-gradient):
    with ``sequence_sum`` an unbiased estimate of α ∇H(π_θ(·|x)) joins the gradient.

    Under ``jax.jit`` a non-finite reward or log-probability where the mask is 1, or a
    "log-probability" above 0, raises scorefn's ValueError at run time (a host callback in
    the compiled program; ``runtime_checks=False`` leaves it out, for a caller that checks the
    loss itself).
    """
    return loss_and_metrics(
        logp, rewards, mask, group_size=group_size, advantage=advantage, aggregation=aggregation,
        behaviour_logp=behaviour_logp, clip=clip, ratio=ratio, ref_logp=ref_logp,
        kl_coef=kl_coef, kl_estimator=kl_estimator, kl_in=kl_in, entropy_coef=entropy_coef,
        std_eps=std_eps, runtime_checks=runtime_checks)[0]
