r"""Returns and advantages over a rollout of shape (T, num_envs), time first.

Every step records ``next_value`` = V(s'_t), the value of the observation the step reached
(before any reset). Then, with d_t = terminated_t or truncated_t:

- discounted reward-to-go, cut at episode ends and bootstrapped where the episode was
  truncated or where the rollout window ends:

      G_t = r_t + γ [ (1 - d_t) G_{t+1} + truncated_t V(s'_t) ],    G_T := V(s'_{T-1}) (if not d)

- GAE(λ) (Schulman et al. 2016):

      δ_t = r_t + γ (1 - terminated_t) V(s'_t) - V(s_t),    A_t = δ_t + γ λ (1 - d_t) A_{t+1}

  and, with a ``horizon`` n, truncated GAE (the PPO paper's "truncated version of GAE" over
  segments of n steps; brax's PPO with n its unroll length): the sum stops at the end of
  each n-step segment of the window, A_t = δ_t + γ λ (1 - d_t)(1 - e_t) A_{t+1} with
  e_t = 1 where t + 1 is a multiple of n: each A_t sums the δ's to its segment's end only.

A terminated step never bootstraps (the true value after termination is 0); a truncated
one does, because the episode would have gone on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def discounted_returns(rewards: jax.Array, terminated: jax.Array, truncated: jax.Array,
                       next_values: jax.Array, gamma: float) -> jax.Array:
    """Reward-to-go G_t, shape (T, ...); pass ``next_values = 0`` for no bootstrapping."""
    done = jnp.logical_or(terminated, truncated)
    # The window's last step continues into values we did not see: bootstrap it too.
    tail = jnp.where(done[-1], 0.0, next_values[-1])

    def backward(carry, step):
        r, d, trunc, v_next = step
        g = r + gamma * (jnp.where(d, 0.0, carry) + jnp.where(trunc, v_next, 0.0))
        return g, g

    _, returns = jax.lax.scan(backward, tail, (rewards, done, truncated, next_values), reverse=True)
    return returns


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, terminated: jax.Array,
        truncated: jax.Array, gamma: float, lam: float, horizon: int | None = None
        ) -> tuple[jax.Array, jax.Array]:
    """(advantages A_t, value targets A_t + V(s_t)), each (T, ...); ``horizon``: truncated
    GAE over segments of that many steps (module docstring), ``None`` for the whole window."""
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int)
                                or horizon < 1):
        raise ValueError(f"horizon must be None or a positive int, got {horizon!r}")
    done = jnp.logical_or(terminated, truncated)
    if horizon is not None:
        ends = (jnp.arange(1, rewards.shape[0] + 1) % horizon == 0).reshape(
            (-1,) + (1,) * (rewards.ndim - 1))
        done = done | ends
    deltas = rewards + gamma * jnp.where(terminated, 0.0, next_values) - values

    def backward(carry, step):
        delta, d = step
        a = delta + gamma * lam * jnp.where(d, 0.0, carry)
        return a, a

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, done), reverse=True)
    return advantages, advantages + values
