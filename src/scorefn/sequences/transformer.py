r"""A small causal transformer in flax, GPT-2's shape, with a key-value cache.

Pre-LayerNorm blocks (causal multi-head self-attention, a 4× GELU MLP), learned position
embeddings, the output projection tied to the token embedding, and GPT-2's initialisation
(weights N(0, 0.02²), the residual projections' scaled by 1/√(2 · num_layers), zero biases).

``decode=True`` reads tokens through the attention cache (``sample_cached``,
``log_probs_cached``): a call with n tokens writes their keys and values at the next n
positions, and position i attends to the cached positions ≤ i. Unlike flax's
``MultiHeadDotProductAttention(decode=True)``, which takes one token per call, a whole prompt
(or a completion, for scoring) goes through in one call (``chunked_decode``). Needs flax
(``pip install 'scorefn[vi]'`` or ``'scorefn[rl]'``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

try:
    import flax.linen as nn
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("scorefn.sequences.transformer needs flax: pip install 'scorefn[vi]'") from error


class CausalSelfAttention(nn.Module):
    r"""softmax(q kᵀ / √d + causal mask) v per head, with a key-value cache under ``decode``.

    The parameters of flax's ``MultiHeadDotProductAttention`` (query, key, value and output
    kernels with biases), laid out heads first: queries, keys and values are [B, H, T, F/H]
    straight from their projections, so the attention's products need no transposes. Under
    ``decode`` the inputs x [B, n, F] sit at positions ``start`` … ``start + n − 1``: their
    keys and values are written to the cache ([B, H, length, F/H]) there, and query i attends
    to cache positions ≤ ``start + i``. The call that creates the cache (``init``) sizes it
    for x and attends causally within x; writing past that length is the caller's to avoid
    (``sample_cached`` and ``log_probs_cached`` size it for prompt and completion)."""

    num_heads: int
    dtype: Any = jnp.float32
    # The kernels are [F, H, F/H] and [H, F/H, F]: fan-in over F, and over (H, F/H).
    kernel_init: Any = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    out_kernel_init: Any = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)

    @nn.compact
    def __call__(self, x: jax.Array, decode: bool = False, start: jax.Array | int = 0) -> jax.Array:
        features = x.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"features ({features}) must be a multiple of num_heads "
                             f"({self.num_heads})")
        head = features // self.num_heads

        def projection(name):  # [B, T, F] -> [B, H, T, F/H]: heads first, for the products
            kernel = self.param(f"{name}_kernel", self.kernel_init, (features, self.num_heads, head))
            bias = self.param(f"{name}_bias", nn.initializers.zeros, (self.num_heads, head))
            return (jnp.einsum("btf,fhd->bhtd", x, kernel.astype(self.dtype))
                    + bias.astype(self.dtype)[None, :, None])

        query, key, value = projection("query"), projection("key"), projection("value")
        positions = jnp.arange(x.shape[1])
        key_positions = positions
        if decode:
            initialised = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                         value.dtype)
            if initialised:
                at = (0, 0, start, 0)
                key = jax.lax.dynamic_update_slice(cached_key.value, key, at)
                value = jax.lax.dynamic_update_slice(cached_value.value, value, at)
                cached_key.value, cached_value.value = key, value
                positions = positions + start
                key_positions = jnp.arange(key.shape[2])
        # Positions not yet written hold zeros; the mask keeps them out, as it keeps the future.
        mask = key_positions[None, :] <= positions[:, None]
        scores = jnp.einsum("bhqd,bhkd->bhqk", query, key) / jnp.sqrt(head).astype(self.dtype)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        attended = jnp.einsum("bhqk,bhkd->bhqd", weights, value)
        out_kernel = self.param("out_kernel", self.out_kernel_init, (self.num_heads, head, features))
        out_bias = self.param("out_bias", nn.initializers.zeros, (features,))
        return (jnp.einsum("bhqd,hdf->bqf", attended, out_kernel.astype(self.dtype))
                + out_bias.astype(self.dtype))


class CausalTransformer(nn.Module):
    """tokens [B, L] → next-token logits [B, L, vocab_size]; positions up to ``max_length``."""

    vocab_size: int
    max_length: int
    num_layers: int = 2
    num_heads: int = 4
    features: int = 128
    dtype: Any = jnp.float32
    # Decode calls take any number of tokens at once, and logits_to_keep (sequences.cached
    # reads this).
    chunked_decode: ClassVar[bool] = True

    @nn.compact
    def __call__(self, tokens: jax.Array, decode: bool = False,
                 logits_to_keep: int | None = None) -> jax.Array:
        """Logits [B, n, V] for tokens [B, n]; with ``logits_to_keep`` = k, those of the last k
        positions only, [B, k, V] (transformers' argument of that name): the last block's MLP
        and the output projection then skip the other positions, whose keys and values the
        attention still reads."""
        if logits_to_keep is not None and not 1 <= logits_to_keep <= tokens.shape[1]:
            raise ValueError(f"logits_to_keep must be None or an int from 1 to the number of "
                             f"tokens ({tokens.shape[1]}), got {logits_to_keep!r}")
        normal = nn.initializers.normal(0.02)
        residual = nn.initializers.normal(0.02 / (2 * self.num_layers) ** 0.5)
        embed = nn.Embed(self.vocab_size, self.features, dtype=self.dtype, embedding_init=normal,
                         name="wte")
        start = jnp.zeros((), jnp.int32)
        if decode:
            # The next position to write, kept with the attention caches; the init call that
            # sizes the caches leaves it at 0.
            initialised = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            if initialised:
                start = position.value
                position.value = position.value + tokens.shape[1]
        positions = start + jnp.arange(tokens.shape[1])
        x = embed(tokens) + nn.Embed(self.max_length, self.features, dtype=self.dtype,
                                     embedding_init=normal, name="wpe")(positions)[None]
        for layer in range(self.num_layers):
            h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
            x = x + CausalSelfAttention(self.num_heads, dtype=self.dtype, kernel_init=normal,
                                        out_kernel_init=residual)(h, decode=decode, start=start)
            if logits_to_keep is not None and layer == self.num_layers - 1:
                x = x[:, -logits_to_keep:]
            h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
            h = nn.Dense(4 * self.features, dtype=self.dtype, kernel_init=normal)(h)
            x = x + nn.Dense(self.features, dtype=self.dtype, kernel_init=residual)(nn.gelu(h))
        return embed.attend(nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)).astype(jnp.float32)
