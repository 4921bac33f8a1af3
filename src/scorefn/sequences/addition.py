"""Worked example: a GPT-2-shaped transformer learns two-digit addition from a reward.

The prompt is "a+b=" (a, b from 10 to 99, one token per character); the completion should be
the digits of a + b, then EOS. The reward gives partial credit, the fraction of the answer's
digits that are right position by position, plus 1 for an exact answer followed by EOS, so it
lies in [0, 2]. This is the task of ``../shared/peers/trl_grpo.py`` (TRL's GRPOTrainer), with
the same tokens, model shape (2 layers, 4 heads, 128 features: 406,912 parameters), warm
start and optimiser settings, so that the two can be compared step for step.

``train`` is the whole method, readable top to bottom: a short supervised warm start (next-
token loss on the answers), then policy-gradient steps, each one compiled program that samples
K completions for each of P prompts (``sample_cached``), scores them (``log_probs_cached``:
each prompt's positions once for its K completions), and takes one optimiser step on
``sequences.loss``. Needs flax (``pip install 'scorefn[vi]'``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scorefn.sequences.cached import flax_logits_fn, log_probs_cached, sample_cached
from scorefn.sequences.losses import loss_and_metrics
from scorefn.sequences.sampling import log_probs
from scorefn.sequences.transformer import CausalTransformer

VOCAB = ["[PAD]", "[EOS]", "[UNK]", *"0123456789", "+", "="]
PAD, EOS = 0, 1
PROMPT_LENGTH, ANSWER_LENGTH = 6, 3


def encode(text: str) -> list[int]:
    return [VOCAB.index(c) for c in text]


def split(seed: int = 0, held_out: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (a, b), 10 ≤ a, b ≤ 99, shuffled: (train [N, 2], held-out [held_out, 2])."""
    pairs = np.array([(a, b) for a in range(10, 100) for b in range(10, 100)])
    pairs = pairs[np.random.default_rng(seed).permutation(len(pairs))]
    return pairs[held_out:], pairs[:held_out]


def prompts_of(pairs: np.ndarray) -> np.ndarray:
    """The prompts "a+b=" as tokens, [P, 6]."""
    return np.array([encode(f"{a}+{b}=") for a, b in pairs], np.int32)


def answers_of(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The answers' digit tokens [P, 3] (padded with PAD) and their lengths [P]."""
    text = [str(a + b) for a, b in pairs]
    tokens = np.array([encode(t) + [PAD] * (ANSWER_LENGTH - len(t)) for t in text], np.int32)
    return tokens, np.array([len(t) for t in text], np.int32)


def reward(tokens: jax.Array, answers: jax.Array, lengths: jax.Array) -> jax.Array:
    """Partial credit plus exactness, [B]: tokens [B, T] (T ≥ 4), answers [B, 3], lengths [B].

    Only tokens before the first EOS count as digits; any other token is a wrong digit."""
    positions = jnp.arange(ANSWER_LENGTH)
    before_eos = jnp.cumsum(tokens == EOS, axis=1) == 0
    right = (tokens[:, :ANSWER_LENGTH] == answers) & before_eos[:, :ANSWER_LENGTH]
    partial = jnp.sum(right & (positions < lengths[:, None]), axis=1) / lengths
    eos_after = jnp.take_along_axis(tokens, lengths[:, None], axis=1)[:, 0] == EOS
    exact = jnp.all(right | (positions >= lengths[:, None]), axis=1) & eos_after
    return partial + exact


@dataclasses.dataclass(frozen=True)
class Config:
    """The peer script's settings (its defaults), so that the two runs are comparable."""

    warmup_steps: int = 750        # supervised steps, batches of 64, AdamW(1e-3), torch's decay 0.01
    warmup_batch: int = 64
    warmup_lr: float = 1e-3
    steps: int = 200               # RL steps, one optimiser step each (the ratio is 1)
    prompts_per_step: int = 16     # P
    num_samples: int = 8           # K
    max_new_tokens: int = 4        # 3 digits + EOS
    lr: float = 1e-4               # constant, Adam, gradients clipped at norm 1 (the HF Trainer's)
    advantage: str = "grpo"
    aggregation: str = "sequence_mean"   # TRL's loss_type="grpo"
    temperature: float = 1.0


def model() -> CausalTransformer:
    return CausalTransformer(vocab_size=len(VOCAB), max_length=64, num_layers=2, num_heads=4,
                             features=128)


logits_fn = flax_logits_fn(model())  # the teacher-forced model, one function object


def warm_start(config: Config, key: jax.Array, train_pairs: np.ndarray) -> Any:
    """Parameters after ``config.warmup_steps`` supervised steps on whole answers + EOS."""
    net = model()
    init_key, key = jax.random.split(key)
    params = net.init(init_key, jnp.zeros((1, PROMPT_LENGTH), jnp.int32))["params"]
    optimiser = optax.adamw(config.warmup_lr, weight_decay=0.01)
    prompts = jnp.asarray(prompts_of(train_pairs))
    answers, lengths = (jnp.asarray(a) for a in answers_of(train_pairs))

    def step(carry, key):
        params, state = carry
        rows = jax.random.choice(key, len(train_pairs), (config.warmup_batch,), replace=False)
        # The answer then EOS, padded with PAD (not trained on) to 4 tokens.
        positions = jnp.arange(ANSWER_LENGTH + 1)
        target = jnp.where(positions < lengths[rows, None],
                           jnp.pad(answers[rows], ((0, 0), (0, 1))), PAD)
        target = jnp.where(positions == lengths[rows, None], EOS, target)
        weight = positions <= lengths[rows, None]

        def nll(params):
            logp = log_probs(logits_fn, params, prompts[rows], target)
            return -jnp.sum(logp * weight) / jnp.sum(weight)

        value, grads = jax.value_and_grad(nll)(params)
        updates, state = optimiser.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), value

    (params, _), _ = jax.lax.scan(step, (params, optimiser.init(params)),
                                  jax.random.split(key, config.warmup_steps))
    return params


def greedy_reward(params: Any, pairs: np.ndarray) -> float:
    """Mean reward of greedy decoding (the argmax token each step) on ``pairs``."""
    # A temperature of 1e-6 puts all the mass on the largest logit: greedy decoding.
    roll = sample_cached(model(), params, jnp.asarray(prompts_of(pairs)), jax.random.key(0),
                         max_new_tokens=ANSWER_LENGTH + 1, temperature=1e-6, eos_id=EOS)
    answers, lengths = answers_of(pairs)
    return float(jnp.mean(reward(roll.tokens, jnp.asarray(answers), jnp.asarray(lengths))))


def rl_optimiser(config: Config) -> optax.GradientTransformation:
    """Adam with the gradient clipped at global norm 1, the HF Trainer's default."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(config.lr))


@functools.partial(jax.jit, static_argnames="config", donate_argnames=("params", "state"))
def rl_step(params: Any, state: Any, key: jax.Array, prompts: jax.Array, answers: jax.Array,
            lengths: jax.Array, config: Config) -> tuple[Any, Any, dict]:
    """One policy-gradient step: P prompts drawn from ``prompts``, K completions each
    (``sample_cached``), their rewards, ``loss`` on their ``log_probs_cached`` and an
    optimiser step. One compiled program per ``config``. ``params`` and ``state`` are donated:
    their buffers hold the new ones, so the arrays passed in are no longer usable (pass copies
    to keep them)."""
    k = config.num_samples
    pick, draw = jax.random.split(key)
    # P distinct prompts, uniformly: the P largest of N uniforms (top_k, not choice's full sort)
    rows = jax.lax.top_k(jax.random.uniform(pick, (prompts.shape[0],)), config.prompts_per_step)[1]
    roll = sample_cached(model(), params, prompts[rows], draw, max_new_tokens=config.max_new_tokens,
                         num_samples=k, temperature=config.temperature, eos_id=EOS)
    r = reward(roll.tokens, jnp.repeat(answers[rows], k, axis=0), jnp.repeat(lengths[rows], k))

    def objective(params):
        logp = log_probs_cached(model(), params, prompts[rows], roll)
        return loss_and_metrics(logp, r, roll.mask, group_size=k, advantage=config.advantage,
                                aggregation=config.aggregation)

    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, state = rl_optimiser(config).update(grads, state, params)
    metrics["tokens"] = jnp.sum(roll.mask)
    return optax.apply_updates(params, updates), state, metrics


def train(config: Config = Config(), seed: int = 0, *, params: Any = None,
          on_step: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Warm start (unless ``params`` are given), then ``config.steps`` RL steps.

    Returns the history (``reward`` and the other metrics per step), the greedy reward on the
    held-out pairs before and after RL, wall times (``wall_rl``: the RL steps, compilation of
    the step included; ``wall_first_step``: the first of them, which compiles the step unless
    this ``Config`` ran before) and the number of completion tokens sampled."""
    train_pairs, eval_pairs = split(0)   # the peer's split is fixed too; seed drives the rest
    key = jax.random.key(seed)
    warm_key, key = jax.random.split(key)
    start = time.perf_counter()
    if params is None:
        params = jax.block_until_ready(warm_start(config, warm_key, train_pairs))
    wall_warm_start = time.perf_counter() - start
    greedy_first = greedy_reward(params, eval_pairs)

    prompts = jnp.asarray(prompts_of(train_pairs))
    answers, lengths = (jnp.asarray(a) for a in answers_of(train_pairs))
    params = jax.tree.map(jnp.copy, params)  # rl_step donates its params: keep the caller's
    state = rl_optimiser(config).init(params)
    metrics, wall_first_step = [], 0.0
    start = time.perf_counter()
    for step, step_key in enumerate(jax.random.split(key, config.steps)):
        params, state, step_metrics = rl_step(params, state, step_key, prompts, answers, lengths,
                                              config)
        metrics.append(step_metrics)  # left on the device: no wait for the step here
        if step == 0:  # the first step compiles: timed apart, for the steady-state rate
            jax.block_until_ready(step_metrics)
            wall_first_step = time.perf_counter() - start
        if on_step is not None:
            on_step(step, {name: float(value) for name, value in step_metrics.items()})
    history = [{name: float(value) for name, value in m.items()} for m in jax.device_get(metrics)]
    wall_rl = time.perf_counter() - start
    return {"history": history, "greedy_first": greedy_first,
            "greedy_last": greedy_reward(params, eval_pairs), "wall_warm_start": wall_warm_start,
            "wall_rl": wall_rl, "wall_first_step": wall_first_step,
            "tokens": sum(h["tokens"] for h in history), "params": params,
            "num_parameters": sum(x.size for x in jax.tree.leaves(params))}
