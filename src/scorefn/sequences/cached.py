r"""Sampling with a key-value cache: one new token per model call, for flax attention models.

The plain ``sample`` runs the whole token buffer through ``logits_fn`` for each new token:
O(T) calls of length L + T, so O(T (L + T)²) attention work per sequence. A model whose
attention keeps flax's autoregressive cache (``flax.linen.MultiHeadDotProductAttention(
decode=True)``) reads each token once instead: L + T calls of length 1.

The model protocol (a flax linen module, ``CausalTransformer`` is one):

- ``model.apply({"params": params}, tokens)``: teacher-forced logits [B, L, V] (causal);
- ``model.apply({"params": params, "cache": cache}, token[:, None], decode=True,
  mutable=["cache"])``: the next-token logits [B, 1, V] after one more token, and the cache;
- ``model.init(key, tokens, decode=True)["cache"]`` sizes the cache for ``tokens.shape``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from scorefn.sequences.sampling import (
    LogitsFn,
    Rollout,
    check_prompts,
    finish,
    next_token,
    sampling_options,
)


@functools.lru_cache(maxsize=64)
def flax_logits_fn(model: Any) -> LogitsFn:
    """``logits_fn`` of a flax model, ``(params, tokens) -> model.apply({"params": params},
    tokens)``: the same function object for the same model, so compiled samplers and losses
    are reused."""

    def logits_fn(params: Any, tokens: jax.Array) -> jax.Array:
        return model.apply({"params": params}, tokens)

    return logits_fn


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_samples",
                                             "temperature", "eos_id"))
def _sample_cached(model, params, prompts, key, max_new_tokens, num_samples, temperature,
                   eos_id):
    pad_id = 0 if eos_id is None else eos_id
    rows = jnp.repeat(prompts, num_samples, axis=0)
    full = jnp.zeros((rows.shape[0], rows.shape[1] + max_new_tokens), rows.dtype)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), full, decode=True))["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def feed(cache, token):
        logits, variables = model.apply({"params": params, "cache": cache}, token[:, None],
                                        decode=True, mutable=["cache"])
        return variables["cache"], logits[:, -1]

    # The prompt, one token at a time: the logits after its last token predict the first new one.
    cache, prompt_logits = jax.lax.scan(feed, cache, rows.T)

    def step(carry, step_key):
        cache, logits, done = carry
        token, logp = next_token(logits, step_key, temperature)
        token, logp, alive, done = finish(token.astype(rows.dtype), logp, done, eos_id, pad_id)
        cache, logits = feed(cache, token)
        return (cache, logits, done), (token, alive, logp)

    done = jnp.zeros(rows.shape[0], bool)
    _, (tokens, mask, logp) = jax.lax.scan(step, (cache, prompt_logits[-1], done),
                                           jax.random.split(key, max_new_tokens))
    return tokens.T, mask.T.astype(jnp.int32), logp.T


def sample_cached(model: Any, params: Any, prompts: jax.Array, key: jax.Array, *,
                  max_new_tokens: int, num_samples: int = 1, temperature: float = 1.0,
                  eos_id: int | None = None) -> Rollout:
    """``sample`` for a flax model with an attention cache (module docstring): the same
    arguments with the model in place of ``logits_fn``, and the same ``Rollout``. With the same
    key the completions are those of ``sample(flax_logits_fn(model), ...)`` up to the rounding
    of the logits (the per-step keys are the same). The model is a static argument (flax
    modules are hashable): one compiled program per model and shape.
    """
    options = sampling_options(max_new_tokens, num_samples, temperature, eos_id)
    return Rollout(*_sample_cached(model, params, check_prompts(prompts), key, *options),
                   options[2])
