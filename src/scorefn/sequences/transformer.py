"""A small causal transformer in flax, GPT-2's shape, with flax's key-value cache.

Pre-LayerNorm blocks (causal multi-head self-attention, a 4× GELU MLP), learned position
embeddings, the output projection tied to the token embedding, and GPT-2's initialisation
(weights N(0, 0.02²), the residual projections' scaled by 1/√(2 · num_layers), zero biases). ``decode=True``
reads one token per call from the attention cache (``sample_cached``). Needs flax
(``pip install 'scorefn[vi]'`` or ``'scorefn[rl]'``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

try:
    import flax.linen as nn
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("scorefn.sequences.transformer needs flax: pip install 'scorefn[vi]'") from error


class CausalTransformer(nn.Module):
    """tokens [B, L] → next-token logits [B, L, vocab_size]; positions up to ``max_length``."""

    vocab_size: int
    max_length: int
    num_layers: int = 2
    num_heads: int = 4
    features: int = 128
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, decode: bool = False) -> jax.Array:
        normal = nn.initializers.normal(0.02)
        residual = nn.initializers.normal(0.02 / (2 * self.num_layers) ** 0.5)
        embed = nn.Embed(self.vocab_size, self.features, dtype=self.dtype, embedding_init=normal,
                         name="wte")
        positions = jnp.arange(tokens.shape[1])
        if decode:
            # The next position to write, kept with the attention caches; the init call that
            # sizes the caches leaves it at 0.
            initialised = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            if initialised:
                positions = positions + position.value
                position.value = position.value + tokens.shape[1]
        x = embed(tokens) + nn.Embed(self.max_length, self.features, dtype=self.dtype,
                                     embedding_init=normal, name="wpe")(positions)[None]
        mask = None if decode else nn.make_causal_mask(tokens)
        for _ in range(self.num_layers):
            h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
            x = x + nn.MultiHeadDotProductAttention(
                self.num_heads, dtype=self.dtype, decode=decode, kernel_init=normal,
                out_kernel_init=residual)(h, mask=mask)
            h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
            h = nn.Dense(4 * self.features, dtype=self.dtype, kernel_init=normal)(h)
            x = x + nn.Dense(self.features, dtype=self.dtype, kernel_init=residual)(nn.gelu(h))
        return embed.attend(nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)).astype(jnp.float32)
