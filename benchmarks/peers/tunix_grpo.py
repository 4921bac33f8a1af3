"""tunix's GRPOLearner on the addition task of ../../../shared/peers/trl_grpo.py (run in a venv
with google-tunix; nothing downloaded).

The same task, data split, reward, warm start and RL settings as the TRL peer: "a+b=" with
two-digit a, b (one token per character), partial-credit reward in [0, 2]; 750 supervised
warm-start steps (batch 64, AdamW 1e-3, decay 0.01) on the answers + EOS; then RL steps of
16 prompts × 8 completions, up to 4 new tokens, temperature 1, Adam 1e-4, gradients clipped at
norm 1, one optimiser step per batch, no KL (beta 0), tunix's "vanilla" rollout engine (its
JAX sampler with a key-value cache). The model is tunix's own Qwen2 at the TRL peer's size: 2
layers, 4 heads of 32, 128 features, tied embeddings, an MLP of 352 (SwiGLU's three matrices:
404,736 parameters against GPT-2's 406,912); tunix ships no GPT-2.

    python benchmarks/peers/tunix_grpo.py --steps 200 --seed 0

The last line is ``key=value`` pairs, as the TRL peer's: wall_sft, wall_rl, steps_per_s,
tokens_per_s, reward_first, reward_last (mean sampled reward of the first and last 10 steps),
greedy_first, greedy_last (greedy decoding on 256 held-out pairs before and after RL).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tunix.generate import sampler as sampler_lib
from tunix.models.qwen2 import model as qwen2
from tunix.rl import rl_cluster as rl_cluster_lib
from tunix.rl.grpo import grpo_learner
from tunix.rl.rollout import base_rollout

VOCAB = ["[PAD]", "[EOS]", "[UNK]", *"0123456789", "+", "="]
PAD, EOS = 0, 1

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=200)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--warmup-steps", type=int, default=750)
args = p.parse_args()


class CharTokenizer:
    """One token per character of VOCAB; no BOS (bos_id 0 is falsy to tunix's sampler)."""

    def encode(self, text, **kwargs):
        return [VOCAB.index(c) for c in str(text)]

    def decode(self, ids, **kwargs):  # EOS as "|", PAD dropped, UNK as "?"
        return "".join({0: "", 1: "|", 2: "?"}.get(int(i), VOCAB[int(i)]) for i in ids)

    def bos_id(self):
        return 0

    def eos_id(self):
        return EOS

    def pad_id(self):
        return PAD


def split(seed=0, held_out=256):  # the TRL peer's split
    pairs = np.array([(a, b) for a in range(10, 100) for b in range(10, 100)])
    pairs = pairs[np.random.default_rng(seed).permutation(len(pairs))]
    return pairs[held_out:], pairs[:held_out]


def reward_of(completion: str, answer: str) -> float:
    """Partial credit (digits right, position by position) + 1 if exact and then EOS. tunix's
    completions stop before EOS: fewer than 4 tokens means EOS came."""
    digits = completion.split("|")[0]
    ended = "|" in completion or len(completion) < 4
    right = sum(1 for i, c in enumerate(answer) if i < len(digits) and digits[i] == c)
    return right / len(answer) + float(digits == answer and ended)


def completion_tokens(completion: str) -> int:
    """Tokens generated, EOS included."""
    return min(len(completion.split("|")[0]) + 1, 4)


config = qwen2.ModelConfig(num_layers=2, vocab_size=len(VOCAB), embed_dim=128, hidden_dim=352,
                           num_heads=4, head_dim=32, num_kv_heads=4, rope_theta=10_000,
                           norm_eps=1e-6, use_tied_embedding=True)
model = qwen2.Qwen2(config, rngs=nnx.Rngs(args.seed))
# GPT-2's initialisation, as the TRL peer's model has: weights and embeddings N(0, 0.02²),
# biases 0, norm scales kept at 1 (Qwen2's own init, unit-normal embeddings tied to the output,
# is meant to be overwritten by pretrained weights and trains poorly from scratch).
params = nnx.state(model, nnx.Param)
init_keys = iter(jax.random.split(jax.random.key(args.seed), len(jax.tree.leaves(params))))


def gpt2_init(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if x.ndim == 1:
        return jnp.zeros_like(x) if "bias" in name else x
    return 0.02 * jax.random.normal(next(init_keys), x.shape, x.dtype)


nnx.update(model, jax.tree_util.tree_map_with_path(gpt2_init, params))
num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
train_pairs, eval_pairs = split(0)
rng = np.random.default_rng(args.seed)


def batch_tokens(pairs):
    prompts = np.array([[VOCAB.index(c) for c in f"{a}+{b}="] for a, b in pairs], np.int32)
    answers = [str(a + b) for a, b in pairs]
    target = np.full((len(pairs), 4), PAD, np.int32)
    weight = np.zeros((len(pairs), 4), np.float32)
    for i, ans in enumerate(answers):
        ids = [VOCAB.index(c) for c in ans] + [EOS]
        target[i, :len(ids)] = ids
        weight[i, :len(ids)] = 1
    return prompts, target, weight


# Supervised warm start: the next-token loss on the answer + EOS, teacher-forced.
optimiser = nnx.Optimizer(model, optax.adamw(1e-3, weight_decay=0.01), wrt=nnx.Param)


@nnx.jit
def sft_step(model, optimiser, prompts, target, weight):
    def loss_fn(model):
        tokens = jnp.concatenate([prompts, target[:, :-1]], axis=1)
        length = tokens.shape[1]
        positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
        mask = jnp.tril(jnp.ones((length, length), bool))[None].repeat(tokens.shape[0], 0)
        logits, _ = model(tokens, positions, None, mask)
        logits = logits[:, prompts.shape[1] - 1:]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1)[..., 0]
        return -jnp.sum(logp * weight) / jnp.sum(weight)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimiser.update(model, grads)
    return loss


start = time.perf_counter()
for _ in range(args.warmup_steps):
    rows = rng.choice(len(train_pairs), 64, replace=False)
    loss = sft_step(model, optimiser, *batch_tokens(train_pairs[rows]))
jax.block_until_ready(loss)
wall_sft = time.perf_counter() - start

tokenizer = CharTokenizer()
rollout_config = base_rollout.RolloutConfig(max_tokens_to_generate=4, max_prompt_length=6,
                                            kv_cache_size=16, temperature=1.0, top_p=1.0,
                                            top_k=None, eos_tokens=[EOS])


def greedy_reward(model) -> float:
    sampler = sampler_lib.Sampler(model, tokenizer, sampler_lib.CacheConfig(
        cache_size=16, num_layers=2, num_kv_heads=4, head_dim=32))
    prompts = [f"{a}+{b}=" for a, b in eval_pairs]
    out = sampler(prompts, max_generation_steps=4, temperature=0.0, top_p=None, top_k=None,
                  eos_tokens=[EOS])
    # text stops at EOS; the completion is exact only if EOS came within 4 tokens
    rewards = []
    for (a, b), tokens in zip(eval_pairs, out.tokens):
        rewards.append(reward_of(tokenizer.decode(np.asarray(tokens)), str(a + b)))
    return float(np.mean(rewards))


greedy_first = greedy_reward(model)
step_rewards: list[float] = []
step_tokens: list[int] = []


def reward_fn(prompts, completions, answer, **kwargs):
    rewards = [reward_of(str(c), str(a)) for c, a in zip(completions, answer)]
    step_rewards.append(float(np.mean(rewards)))
    step_tokens.append(sum(completion_tokens(str(c)) for c in completions))
    return rewards


cluster = rl_cluster_lib.RLCluster(
    actor=model, reference=None, tokenizer=tokenizer,
    cluster_config=rl_cluster_lib.ClusterConfig(
        role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                      rl_cluster_lib.Role.ROLLOUT: mesh},
        rollout_engine="vanilla", offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4)),
            eval_every_n_steps=10**9, max_steps=args.steps),
        rollout_config=rollout_config))
learner = grpo_learner.GRPOLearner(
    rl_cluster=cluster, reward_fns=[reward_fn],
    algo_config=grpo_learner.GRPOConfig(num_generations=8, num_iterations=1, beta=0.0,
                                        epsilon=0.2))


def dataset():
    for _ in range(args.steps):
        rows = rng.choice(len(train_pairs), 16, replace=False)
        # arrays, not lists: tunix repeats each leaf num_generations times with np.repeat
        yield {"prompts": np.array([f"{a}+{b}=" for a, b in train_pairs[rows]]),
               "answer": np.array([str(a + b) for a, b in train_pairs[rows]])}


start = time.perf_counter()
learner.train(dataset())
wall_rl = time.perf_counter() - start
greedy_last = greedy_reward(cluster.actor_trainer.model)
print(f"versions tunix={importlib.metadata.version('google-tunix')} jax={jax.__version__} "
      f"flax={importlib.metadata.version('flax')} params={num_params}")
k = max(1, min(10, len(step_rewards) // 10))
print(f"wall_sft={wall_sft:.1f}s wall_rl={wall_rl:.1f}s steps_per_s={args.steps / wall_rl:.3f} "
      f"tokens_per_s={sum(step_tokens) / wall_rl:.1f} "
      f"reward_first={np.mean(step_rewards[:k]):.3f} reward_last={np.mean(step_rewards[-k:]):.3f} "
      f"greedy_first={greedy_first:.3f} greedy_last={greedy_last:.3f}")
