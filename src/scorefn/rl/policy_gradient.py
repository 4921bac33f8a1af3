r"""The policy-gradient estimator every algorithm here uses, through ``scorefn.score_grad``.

With dynamics independent of θ, ∇θ log p_θ(τ) = Σ_t ∇θ log π_θ(a_t | s_t), so

$$
\nabla_\theta J \approx \frac{1}{Z}\sum_n w_n\, \nabla_\theta \log \pi_\theta(a_n \mid s_n)
$$

over the N decisions of a batch, each decision one factor of the batched distribution
π_θ(· | s_1..N) (``score_grad(per_factor=True)``), with a learning signal w_n per decision:

- REINFORCE: w = G_t - b_t (reward-to-go minus a baseline);
- A2C, TRPO/NPG: w = Â_t (an advantage estimate);
- PPO: w = ρ Â 1[unclipped], ρ = π_θ/π_old the importance ratio: the gradient of the
  clipped surrogate min(ρ Â, clip(ρ, 1 ± ε) Â), since ∇ρ = ρ ∇ log π_θ.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from scorefn.estimators import score_grad
from scorefn.rl.networks import ActorCritic


def policy_gradient(policy: ActorCritic, policy_params: Any, obs: jax.Array, actions: jax.Array,
                    weights: jax.Array, normalizer: Any = None, *,
                    runtime_checks: bool = True) -> Any:
    """(1/Z) Σ_n w_n ∇θ log π_θ(a_n | s_n) for flat batches; Z = N by default.

    ``runtime_checks``: as ``scorefn.score_grad``'s; the algorithms here pass False, since
    ``rl.train`` checks each chunk's losses and parameters itself."""
    n = actions.shape[0]
    z = n if normalizer is None else normalizer
    signal = jax.lax.stop_gradient(weights / z)
    return score_grad(lambda p: policy.dist(p, obs), policy_params, actions[None], signal[None],
                      per_factor=True, samples_from_dist=True, validate=False,
                      runtime_checks=runtime_checks)


def entropy_grad(policy: ActorCritic, policy_params: Any, obs: jax.Array,
                 coefficient: float = 1.0) -> tuple[Any, jax.Array]:
    """∇θ of the mean policy entropy (``ActorCritic.entropy`` per state), and that mean. With a zero
    ``coefficient`` only the mean is computed (the gradient would be multiplied by 0)."""
    def mean_entropy(p):
        return jnp.mean(policy.entropy(policy.dist(p, obs)))

    if isinstance(coefficient, float | int) and coefficient == 0:
        return None, mean_entropy(policy_params)
    value, grad = jax.value_and_grad(mean_entropy)(policy_params)
    return grad, value


def combine(*terms: tuple[float, Any]) -> Any:
    """Σ_i c_i g_i over pytrees (skipping zero coefficients)."""
    out = None
    for coefficient, tree in terms:
        if tree is None or (isinstance(coefficient, float | int) and coefficient == 0):
            continue
        scaled = jax.tree.map(lambda g, c=coefficient: c * g, tree)
        out = scaled if out is None else jax.tree.map(jnp.add, out, scaled)
    return out
