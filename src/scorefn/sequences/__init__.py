r"""Policy gradients for autoregressive policies, for users' own training loops.

    roll = scorefn.sequences.sample(logits_fn, params, prompts, key, max_new_tokens=T, num_samples=K)
    rewards = my_reward(prompts, roll.tokens, roll.mask)                 # any Python or JAX code
    def objective(params):
        logp = scorefn.sequences.log_probs(logits_fn, params, prompts, roll)
        return scorefn.sequences.loss(logp, rewards, roll.mask, group_size=K, advantage="rloo")
    grads = jax.grad(objective)(params)                                  # then optax, as usual

``logits_fn(params, tokens)`` is any causal model ([B, L] tokens to [B, L, V] logits);
``sample_cached`` and ``log_probs_cached`` sample and score through a flax model's attention
cache (``CausalTransformer``'s), each prompt computed once for its K samples.
``loss`` covers RLOO, GRPO, Dr. GRPO, REINFORCE++, DAPO's token means, PPO/DAPO clipping and
GSPO's sequence ratio, and KL penalties, each an independent option whose expected gradient
is stated exactly (``loss``) and checked by enumeration on ``TabularPolicy``.
"""

from scorefn.sequences.cached import flax_logits_fn, log_probs_cached, sample_cached
from scorefn.sequences.losses import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_PLACES,
    RATIOS,
    group_advantages,
    loss,
    loss_and_metrics,
    token_weights,
)
from scorefn.sequences.sampling import Rollout, log_probs, sample
from scorefn.sequences.tabular import TabularPolicy


def __getattr__(name: str):
    # The flax model needs flax (an extra): imported on use.
    if name == "CausalTransformer":
        from scorefn.sequences.transformer import CausalTransformer

        return CausalTransformer
    raise AttributeError(f"module 'scorefn.sequences' has no attribute {name!r}")


__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "CausalTransformer",
    "KL_PLACES",
    "RATIOS",
    "Rollout",
    "TabularPolicy",
    "flax_logits_fn",
    "group_advantages",
    "log_probs",
    "log_probs_cached",
    "loss",
    "loss_and_metrics",
    "sample",
    "sample_cached",
    "token_weights",
]
