r"""Sampling completions from an autoregressive policy, and their log-probabilities.

A policy is any causal model given as ``logits_fn(params, tokens) -> logits``: tokens [B, L]
(int) to next-token logits [B, L, V], where ``logits[:, j]`` depends only on ``tokens[:, :j+1]``
(teacher forcing). A completion y = (y_1, …, y_T) of a prompt x has

$$
\log \pi_\theta(y \mid x) = \sum_{t=1}^{|y|} \log \operatorname{softmax}\big(z_t / \tau\big)_{y_t},
\qquad z_t = \texttt{logits\_fn}(\theta, [x, y_{<t}])_{\text{last}},
$$

with temperature τ, and |y| the position of the first EOS (included) or T. Tokens after the
EOS are padding: the mask is 0 there and their log-probabilities are 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from scorefn import validation

LogitsFn = Callable[[Any, jax.Array], jax.Array]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["tokens", "mask", "logp"], meta_fields=["temperature"])
@dataclasses.dataclass(frozen=True)
class Rollout:
    """Sampled completions: ``tokens`` [B, T] (int), ``mask`` [B, T] (1 for each generated
    token up to and including EOS, 0 after), ``logp`` [B, T] (the sampling policy's
    log-probabilities at ``temperature``, 0 where the mask is 0). Rows ``p·K … p·K+K-1`` are
    the K samples of prompt p. A pytree; ``temperature`` is static metadata, so that
    ``log_probs(..., rollout)`` scores the completions at the temperature they were drawn at.
    """

    tokens: jax.Array
    mask: jax.Array
    logp: jax.Array
    temperature: float = 1.0

    @property
    def lengths(self) -> jax.Array:
        """Each completion's length |y| (EOS included), [B]."""
        return jnp.sum(self.mask, axis=1)


def check_prompts(prompts: Any) -> jax.Array:
    prompts = jnp.asarray(prompts)
    if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError("prompts must be an integer array of shape (num_prompts, prompt_length); "
                         f"got dtype {prompts.dtype} and shape {prompts.shape}")
    if prompts.shape[0] < 1 or prompts.shape[1] < 1:
        raise ValueError(f"prompts must hold at least one prompt of at least one token, "
                         f"got shape {prompts.shape}")
    return prompts


def check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a Python number > 0, got {temperature!r}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
    return float(temperature)


def check_eos_id(eos_id: Any) -> None:
    if eos_id is not None and (isinstance(eos_id, bool) or not isinstance(eos_id, int) or eos_id < 0):
        raise ValueError(f"eos_id must be None or a token id (an int >= 0), got {eos_id!r}")


def sampling_options(max_new_tokens: Any, num_samples: Any, temperature: Any,
                     eos_id: Any) -> tuple[int, int, float, int | None]:
    """The samplers' options, checked: (max_new_tokens, num_samples, temperature, eos_id)."""
    check_eos_id(eos_id)
    return (validation.check_int(max_new_tokens, "max_new_tokens"),
            validation.check_int(num_samples, "num_samples"), check_temperature(temperature), eos_id)


def check_logits(logits: jax.Array, tokens: jax.Array) -> None:
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(
            f"logits_fn must map tokens of shape (B, L) = {tokens.shape} to logits of shape "
            f"(B, L, vocab_size); got shape {logits.shape}")


def check_eos_in_vocab(eos_id: int | None, vocab_size: int) -> None:
    """An eos_id outside the vocabulary is never sampled: every completion would run to
    max_new_tokens without a word."""
    if eos_id is not None and eos_id >= vocab_size:
        raise ValueError(f"eos_id {eos_id} is not a token of this vocabulary (logits_fn's "
                         f"vocab_size is {vocab_size}): no completion would end")


def upcast(logits: jax.Array) -> jax.Array:
    """bfloat16/float16 logits to float32 before the softmax; float32 and float64 kept."""
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def chosen_log_probs(logits: jax.Array, tokens: jax.Array, temperature: float) -> jax.Array:
    """log softmax(logits / temperature) at each given token: [..., V] and [...] to [...]."""
    log_p = jax.nn.log_softmax(upcast(logits) / temperature, axis=-1)
    return jnp.take_along_axis(log_p, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def next_token(logits: jax.Array, key: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """A token drawn from softmax(logits / temperature) and its log-probability, per row."""
    log_p = jax.nn.log_softmax(upcast(logits) / temperature, axis=-1)
    token = jax.random.categorical(key, log_p, axis=-1)
    return token, jnp.take_along_axis(log_p, token[:, None], axis=-1)[:, 0]


def finish(token: jax.Array, logp: jax.Array, done: jax.Array, eos_id: int | None,
           pad_id: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """One step's token, log-probability and mask once finished rows are masked; the new
    finished flags (a row finishes on the step it emits EOS)."""
    alive = ~done
    token = jnp.where(alive, token, pad_id)
    logp = jnp.where(alive, logp, 0.0)
    now_done = done if eos_id is None else done | (alive & (token == eos_id))
    return token, logp, alive, now_done


@functools.partial(jax.jit, static_argnames=("logits_fn", "max_new_tokens", "num_samples",
                                             "temperature", "eos_id"))
def _sample(logits_fn, params, prompts, key, max_new_tokens, num_samples, temperature, eos_id):
    prompt_length = prompts.shape[1]
    pad_id = 0 if eos_id is None else eos_id
    rows = jnp.repeat(prompts, num_samples, axis=0)
    buffer = jnp.concatenate(
        [rows, jnp.full((rows.shape[0], max_new_tokens), pad_id, rows.dtype)], axis=1)
    shape = jax.eval_shape(logits_fn, params, buffer)
    check_logits(shape, buffer)
    check_eos_in_vocab(eos_id, shape.shape[-1])

    def step(carry, inputs):
        buffer, done = carry
        t, step_key = inputs
        # The whole buffer each step: positions after the current one do not reach the
        # logits of a causal model, and one shape means one compiled program.
        logits = jax.lax.dynamic_index_in_dim(logits_fn(params, buffer), prompt_length + t - 1,
                                              axis=1, keepdims=False)
        token, logp = next_token(logits, step_key, temperature)
        token, logp, alive, done = finish(token.astype(buffer.dtype), logp, done, eos_id, pad_id)
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, token, prompt_length + t, axis=1)
        return (buffer, done), (token, alive, logp)

    steps = (jnp.arange(max_new_tokens), jax.random.split(key, max_new_tokens))
    done = jnp.zeros(rows.shape[0], bool)
    _, (tokens, mask, logp) = jax.lax.scan(step, (buffer, done), steps)
    return tokens.T, mask.T.astype(jnp.int32), logp.T


def sample(logits_fn: LogitsFn, params: Any, prompts: jax.Array, key: jax.Array, *,
           max_new_tokens: int, num_samples: int = 1, temperature: float = 1.0,
           eos_id: int | None = None) -> Rollout:
    r"""Draw ``num_samples`` completions of each prompt from π_θ at ``temperature``.

    ``prompts`` [P, L] (int, equal lengths; pad them yourself, in a way your model reads);
    the result has B = P · num_samples rows, the samples of one prompt contiguous. One
    compiled program (a ``lax.scan`` over the ``max_new_tokens`` positions, the whole
    token buffer through ``logits_fn`` at each: O(T) model calls of length L + T). For a flax
    attention model with a key-value cache, ``sample_cached`` reads each token once.
    Without ``eos_id`` every completion has ``max_new_tokens`` tokens. Same key, same result.
    ``logits_fn`` is a static argument: pass the same function object each call (not a new
    lambda) to reuse the compiled program.
    """
    options = sampling_options(max_new_tokens, num_samples, temperature, eos_id)
    return Rollout(*_sample(logits_fn, params, check_prompts(prompts), key, *options),
                   options[2])


def rollout_tokens(tokens: Any, temperature: Any, num_prompts: int) -> tuple[jax.Array, float]:
    """The completions to score and their temperature: a Rollout's own, or the array's with
    ``temperature`` (default 1), checked."""
    if isinstance(tokens, Rollout):
        if temperature is not None and check_temperature(temperature) != tokens.temperature:
            raise ValueError(
                f"temperature={temperature!r} differs from the rollout's sampling temperature "
                f"{tokens.temperature!r}; the importance ratios would be wrong. Omit temperature "
                "to use the rollout's")
        temperature, tokens = tokens.temperature, tokens.tokens
    temperature = 1.0 if temperature is None else check_temperature(temperature)
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an integer array of shape (B, T), got dtype "
                         f"{tokens.dtype} and shape {tokens.shape}")
    if tokens.shape[0] % num_prompts:
        raise ValueError(f"tokens has {tokens.shape[0]} rows, not a multiple of the "
                         f"{num_prompts} prompts")
    return tokens, temperature


def _completion_logits(logits_fn, params, prompts, tokens):
    rows = tokens.shape[0]
    full = jnp.concatenate([jnp.repeat(prompts, rows // prompts.shape[0], axis=0), tokens], axis=1)
    logits = logits_fn(params, full)
    check_logits(logits, full)
    start = prompts.shape[1] - 1
    return logits[:, start:start + tokens.shape[1]]


def log_probs(logits_fn: LogitsFn, params: Any, prompts: jax.Array, tokens: jax.Array | Rollout,
              *, temperature: float | None = None) -> jax.Array:
    r"""log π_θ(y_t | x, y_{<t}) at ``temperature``, [B, T], differentiable in ``params``.

    ``tokens`` [B, T] with B a multiple of P (each prompt's rows contiguous, as ``sample``
    returns them), or the ``Rollout`` itself. Given a Rollout, the temperature is the one it
    was sampled at; an explicit ``temperature`` that differs raises, since scoring samples at
    another temperature than they were drawn at silently biases every importance ratio.
    Without a Rollout the default temperature is 1. Positions after EOS get log-probabilities
    too (of the padding); the loss ignores them through the mask.
    """
    prompts = check_prompts(prompts)
    tokens, temperature = rollout_tokens(tokens, temperature, prompts.shape[0])
    logits = _completion_logits(logits_fn, params, prompts, tokens.astype(prompts.dtype))
    return chosen_log_probs(logits, tokens, temperature)
