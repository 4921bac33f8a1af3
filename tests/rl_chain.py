"""A two-step chain MDP with a closed-form J(θ), driven through the real rollout code.

s0 --a--> s_{1+a} --b--> end.  R0 = (1, 0)[a],  R1 = [[0, 2], [3, -1]][a][b],  γ = 1.
Observations are one-hot states; every episode terminates after exactly two steps.
"""

import dataclasses

import jax
import jax.numpy as jnp

from scorefn.rl.envs import Space

R0 = jnp.array([1.0, 0.0])
R1 = jnp.array([[0.0, 2.0], [3.0, -1.0]])


@dataclasses.dataclass(frozen=True)
class ChainState:
    position: jax.Array  # 0, 1 or 2
    t: jax.Array


jax.tree_util.register_dataclass(ChainState, data_fields=["position", "t"], meta_fields=[])


class TwoStepChain:
    id = "two-step-chain"
    obs_shape = (3,)
    action_space = Space(True, 2)
    max_episode_steps = 2

    def reset(self, key):
        state = ChainState(jnp.array(0), jnp.array(0))
        return jax.nn.one_hot(0, 3), state

    def step(self, key, state, action):
        first = state.t == 0
        reward = jnp.where(first, R0[action], R1[jnp.maximum(state.position - 1, 0), action])
        next_position = jnp.where(first, 1 + action, 0)
        terminated = ~first
        final_obs = jax.nn.one_hot(next_position, 3)
        obs, reset_state = self.reset(key)
        state = ChainState(jnp.where(terminated, 0, next_position), jnp.where(terminated, 0, 1))
        obs = jnp.where(terminated, obs, final_obs)
        return obs, state, reward, terminated, jnp.array(False), final_obs


def exact_return(policy, policy_params):
    """J(θ) = Σ_a π(a|s0) [R0(a) + Σ_b π(b|s_{1+a}) R1(a, b)]."""
    probs = jax.nn.softmax(policy.dist(policy_params, jnp.eye(3)).logits, axis=-1)
    second = jnp.sum(probs[1:] * R1, axis=-1)  # expected second reward after a = 0, 1
    return jnp.sum(probs[0] * (R0 + second))
