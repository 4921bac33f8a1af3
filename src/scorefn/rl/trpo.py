r"""TRPO (Schulman et al. 2015) and NPG (Kakade 2001): natural policy gradients.

Per update: a rollout, GAE(λ) advantages Â (standardised), the policy gradient
g = (1/N) Σ Â_n ∇θ log π_θ(a_n | s_n) from ``scorefn.rl.policy_gradient.policy_gradient``,
and the natural direction x ≈ F⁻¹ g by conjugate gradient (``scorefn.fisher.natural_gradient_cg``)
on Fisher-vector products v ↦ ∇²_θ' KL(π_θ ‖ π_θ') v, the Hessian of the mean KL over the
batch's states (``scorefn.fisher.kl_fisher_vector_product``). The step

    θ ← θ + β x,   β = √(2δ / xᵀ F x)

moves the mean KL by about δ (``max_kl``). NPG takes it as it is (``line_search=False``);
TRPO backtracks β ← β/2 until the surrogate (1/N) Σ ρ Â improves and the mean
KL(π_old ‖ π_θ) ≤ δ, or keeps θ. The value function is fitted by Adam on (Â + V)
minibatches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scorefn.estimators import standardized
from scorefn.fisher import kl, kl_fisher_vector_product, natural_gradient_cg
from scorefn.importance import log_weights_per_factor
from scorefn.rl import actor_critic
from scorefn.rl.actor_critic import State
from scorefn.rl.networks import ActorCritic
from scorefn.rl.policy_gradient import policy_gradient
from scorefn.rl.rollout import Transition


@dataclasses.dataclass(frozen=True)
class Config(actor_critic.Config):
    num_steps: int = 128
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 0.1
    line_search: bool = True
    backtracks: int = 10
    value_learning_rate: float = 1e-3
    value_epochs: int = 5
    value_minibatch_size: int = 256


episodic = False


def init(key: jax.Array, policy: ActorCritic, env: Any, config: Config) -> State:
    """The networks, and Adam's state for the value function's (the policy steps without an
    optimiser)."""
    params = policy.init(key, env.obs_shape)
    return State(params, optax.adam(config.value_learning_rate).init(params["value"]))


def update(state: State, batch: Transition, key: jax.Array, policy: ActorCritic,
           config: Config) -> tuple[State, dict]:
    data = actor_critic.rollout_data(batch, config.gamma, config.gae_lambda, config.gae_horizon)
    obs, actions, flat_targets = data["obs"], data["action"], data["target"]
    adv = standardized(data["advantage"], ddof=1)  # torch's unbiased std, as SB3
    old = state.params["policy"]

    def dist_fn(p):
        return policy.dist(p, obs)

    g = policy_gradient(policy, old, obs, actions, adv, runtime_checks=False)
    fvp = kl_fisher_vector_product(dist_fn, old)
    x = natural_gradient_cg(fvp, g, damping=config.cg_damping, maxiter=config.cg_iterations)
    x_fx = _dot(x, fvp(x))
    beta = jnp.sqrt(2 * config.max_kl / jnp.maximum(x_fx, 1e-12))
    old_dist = dist_fn(old)

    def surrogate_and_kl(p):
        ratio = jnp.exp(log_weights_per_factor(dist_fn(p), actions, data["log_prob"]))
        return jnp.mean(ratio * adv), jnp.mean(kl(old_dist, dist_fn(p)))

    def candidate(fraction):
        return jax.tree.map(lambda a, b: a + fraction * beta * b, old, x)

    if config.line_search:
        fractions = 0.5 ** jnp.arange(config.backtracks)
        surrogates, kls = jax.vmap(lambda f: surrogate_and_kl(candidate(f)))(fractions)
        base, _ = surrogate_and_kl(old)
        ok = (surrogates > base) & (kls <= config.max_kl)
        first = jnp.argmax(ok)
        fraction = jnp.where(jnp.any(ok), fractions[first], 0.0)
    else:
        fraction = jnp.asarray(1.0)
    new_policy = candidate(fraction)
    new_surrogate, step_kl = surrogate_and_kl(new_policy)

    value_opt = optax.adam(config.value_learning_rate)
    n = adv.shape[0]
    num_minibatches = max(1, n // config.value_minibatch_size)

    def value_epoch(carry, key):
        order = jax.random.permutation(key, n)[: num_minibatches * config.value_minibatch_size]
        mb_obs = obs[order].reshape((num_minibatches, -1) + obs.shape[1:])
        tgt = flat_targets[order].reshape(num_minibatches, -1)

        def step(carry, mb):
            p, s = carry
            loss, grad = jax.value_and_grad(
                lambda q: 0.5 * jnp.mean((policy.value(q, mb[0]) - mb[1]) ** 2))(p)
            u, s = value_opt.update(grad, s, p)
            return (optax.apply_updates(p, u), s), loss

        return jax.lax.scan(step, carry, (mb_obs, tgt))

    (value_params, value_opt_state), losses = jax.lax.scan(
        value_epoch, (state.params["value"], state.opt_state),
        jax.random.split(key, config.value_epochs))
    metrics = {"policy_loss": -new_surrogate, "value_loss": jnp.mean(losses[-1]), "kl": step_kl,
               "step_fraction": fraction, "entropy": jnp.mean(policy.entropy(old_dist))}
    return State({"policy": new_policy, "value": value_params}, value_opt_state), metrics


def _dot(a: Any, b: Any) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
