r"""Sampling and scoring through a key-value cache, for flax attention models.

The plain ``sample`` runs the whole token buffer through ``logits_fn`` for each new token:
O(T) calls of length L + T, so O(T (L + T)²) attention work per sequence. A model whose
attention keeps a key-value cache reads each token once instead, and each prompt once for
its K samples: the prompt's keys and values are computed for P rows and copied to the P·K.

The model protocol (a flax linen module; ``CausalTransformer`` is one):

- ``model.apply({"params": params}, tokens)``: teacher-forced logits [B, L, V] (causal);
- ``model.apply({"params": params, "cache": cache}, tokens, decode=True, mutable=["cache"])``
  with tokens [B, n]: the logits [B, n, V] at the next n positions, and the cache with them;
- ``model.init(key, tokens, decode=True)["cache"]`` sizes the cache for ``tokens.shape``.

A model built on flax's ``MultiHeadDotProductAttention(decode=True)`` takes n = 1 only: the
prompt is then read one position per call. A model that sets the class attribute
``chunked_decode = True`` takes any n, and the keyword ``logits_to_keep`` = k (the logits of
the last k positions only, as in transformers): the prompt goes through in one call that
computes its last position's logits alone, and ``log_probs_cached`` scores all completions in
one more.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from scorefn.sequences.sampling import (
    LogitsFn,
    Rollout,
    check_eos_in_vocab,
    check_prompts,
    chosen_log_probs,
    finish,
    next_token,
    rollout_tokens,
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


def _feed(model, params, cache, tokens, **options):
    """Tokens [B, n] through the cached model: the new cache and their logits [B, n, V]."""
    logits, variables = model.apply({"params": params, "cache": cache}, tokens, decode=True,
                                    mutable=["cache"], **options)
    return variables["cache"], logits


def _feed_one(model, params, cache, token):
    cache, logits = _feed(model, params, cache, token[:, None])
    return cache, logits[:, -1]


def _feed_all(model, params, cache, tokens, **options):
    """``_feed`` for any model: one call where it takes several tokens (``chunked_decode``),
    with ``options`` (``logits_to_keep``), else one position per call in a ``lax.scan`` (every
    position's logits)."""
    if getattr(model, "chunked_decode", False):
        return _feed(model, params, cache, tokens, **options)
    cache, logits = jax.lax.scan(functools.partial(_feed_one, model, params), cache, tokens.T)
    return cache, logits.swapaxes(0, 1)


def _prefill(model, params, prompts, num_samples, length):
    """The cache after each prompt, computed once per prompt and then copied to its
    ``num_samples`` rows, and the logits that predict the first new token: [P·K, V]."""
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((prompts.shape[0], length), prompts.dtype), decode=True))
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
    # only the last position's logits are read
    cache, logits = _feed_all(model, params, cache, prompts, logits_to_keep=1)
    last = logits[:, -1]

    def per_row(x):  # the per-prompt arrays (not the shared position counters)
        return jnp.repeat(x, num_samples, axis=0) if x.ndim and x.shape[0] == prompts.shape[0] else x

    return jax.tree.map(per_row, cache), per_row(last)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_samples",
                                             "temperature", "eos_id"))
def _sample_cached(model, params, prompts, key, max_new_tokens, num_samples, temperature,
                   eos_id):
    pad_id = 0 if eos_id is None else eos_id
    cache, logits = _prefill(model, params, prompts, num_samples,
                             prompts.shape[1] + max_new_tokens)
    check_eos_in_vocab(eos_id, logits.shape[-1])

    def draw(logits, done, step_key):
        token, logp = next_token(logits, step_key, temperature)
        return finish(token.astype(prompts.dtype), logp, done, eos_id, pad_id)

    def step(carry, step_key):
        cache, logits, done = carry
        token, logp, alive, done = draw(logits, done, step_key)
        cache, logits = _feed_one(model, params, cache, token)
        return (cache, logits, done), (token, alive, logp)

    # The last token is drawn outside the loop: nothing reads the logits after it.
    keys = jax.random.split(key, max_new_tokens)
    done = jnp.zeros(logits.shape[0], bool)
    (_, logits, done), (tokens, mask, logp) = jax.lax.scan(step, (cache, logits, done), keys[:-1])
    token, last_logp, alive, _ = draw(logits, done, keys[-1])
    tokens, mask, logp = (jnp.concatenate([a, b[None]]) for a, b in
                          ((tokens, token), (mask, alive), (logp, last_logp)))
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


def log_probs_cached(model: Any, params: Any, prompts: jax.Array, tokens: jax.Array | Rollout,
                     *, temperature: float | None = None) -> jax.Array:
    """``log_probs`` through the attention cache: the same values and gradients for a flax
    model (module docstring), with each prompt's positions computed once for its K rows
    instead of K times. A ``chunked_decode`` model then reads the completions (all but their
    last token, whose logits nothing needs) in one call against the copied prompt cache: per
    row T − 1 positions instead of the teacher-forced pass's L + T. Other models read them one
    position per call."""
    prompts = check_prompts(prompts)
    tokens, temperature = rollout_tokens(tokens, temperature, prompts.shape[0])
    cache, first = _prefill(model, params, prompts, tokens.shape[0] // prompts.shape[0],
                            prompts.shape[1] + tokens.shape[1])
    tokens = tokens.astype(prompts.dtype)
    logits = first[:, None]
    if tokens.shape[1] > 1:  # the last token's logits predict nothing scored
        logits = jnp.concatenate([logits, _feed_all(model, params, cache, tokens[:, :-1])[1]],
                                 axis=1)
    return chosen_log_probs(logits, tokens, temperature)
