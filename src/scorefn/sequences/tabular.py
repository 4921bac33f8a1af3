r"""A tabular autoregressive policy small enough to enumerate: the exact reference for every
sequence estimator.

The next-token logits are a free table indexed by the whole prefix (prompt and completion so
far), so every completion's probability is a product of table softmaxes and every completion
can be listed. With vocabulary V, prompts of length L and T new tokens, the table has
Σ_{n=1}^{L+T} Vⁿ rows. Exact expectations of any function of the completions, and their
gradients, follow by summing over the list:

$$
J(\theta) = \frac{1}{P}\sum_{p=1}^{P} \sum_{y} \pi_\theta(y \mid x_p)\, R(x_p, y).
$$
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn.sequences.losses import loss
from scorefn.sequences.sampling import check_prompts, log_probs


class TabularPolicy:
    """Logits ``params[prefix index]``: ``params`` is a [num_prefixes, vocab_size] array.

    ``logits_fn`` is the policy for ``sample`` and ``log_probs``; ``completions`` lists every
    completion (tokens after EOS are ``eos_id``); ``sequence_log_probs`` gives log π(y|x) of
    each; ``objective`` the exact J(θ) for a reward table.
    """

    def __init__(self, vocab_size: int = 3, prompt_length: int = 1, max_new_tokens: int = 3,
                 eos_id: int | None = 0):
        if vocab_size < 2 or prompt_length < 1 or max_new_tokens < 1:
            raise ValueError("vocab_size >= 2, prompt_length >= 1 and max_new_tokens >= 1 needed, "
                             f"got {vocab_size}, {prompt_length}, {max_new_tokens}")
        if eos_id is not None and not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id must be None or in [0, {vocab_size}), got {eos_id}")
        self.vocab_size, self.prompt_length = vocab_size, prompt_length
        self.max_new_tokens, self.eos_id = max_new_tokens, eos_id
        length = prompt_length + max_new_tokens
        sizes = vocab_size ** np.arange(1, length + 1)
        self.num_prefixes = int(sizes.sum())
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._powers = vocab_size ** np.arange(length)

    def init(self, key: jax.Array, scale: float = 1.0) -> jax.Array:
        """A random table, N(0, scale²) logits."""
        return scale * jax.random.normal(key, (self.num_prefixes, self.vocab_size))

    def logits_fn(self, params: jax.Array, tokens: jax.Array) -> jax.Array:
        """[B, n] tokens (n ≤ L + T) to [B, n, V] logits: position j reads the row of the
        prefix tokens[:, :j+1]."""
        n = tokens.shape[1]
        codes = jnp.cumsum(tokens * jnp.asarray(self._powers[:n], tokens.dtype), axis=1)
        return params[codes + jnp.asarray(self._offsets[:n], tokens.dtype)]

    def completions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every completion: tokens [N, T] and mask [N, T], in a fixed order."""
        tokens, masks = [], []
        for seq in itertools.product(range(self.vocab_size), repeat=self.max_new_tokens):
            if self.eos_id is not None and self.eos_id in seq[:-1]:
                end = seq.index(self.eos_id) + 1
                if any(s != self.eos_id for s in seq[end:]):
                    continue  # padding after EOS is EOS: one row per completion
                mask = [1] * end + [0] * (self.max_new_tokens - end)
            else:
                mask = [1] * self.max_new_tokens
            tokens.append(seq)
            masks.append(mask)
        return np.array(tokens, np.int32), np.array(masks, np.int32)

    def token_log_probs(self, params: jax.Array, prompts: jax.Array,
                        temperature: float = 1.0) -> jax.Array:
        """log π(y_t | x, y_<t) of every completion's tokens, [P, N, T] (0 after EOS)."""
        prompts = check_prompts(prompts)
        tokens, mask = self.completions()
        n = tokens.shape[0]
        rows = jnp.tile(jnp.asarray(tokens), (prompts.shape[0], 1))
        per_token = log_probs(self.logits_fn, params, prompts, rows, temperature=temperature)
        return per_token.reshape(prompts.shape[0], n, -1) * jnp.asarray(mask)

    def sequence_log_probs(self, params: jax.Array, prompts: jax.Array,
                           temperature: float = 1.0) -> jax.Array:
        """log π(y | x) of every completion, [P, N]."""
        return jnp.sum(self.token_log_probs(params, prompts, temperature), axis=-1)

    def objective(self, params: jax.Array, prompts: jax.Array, rewards: jax.Array,
                  temperature: float = 1.0) -> jax.Array:
        """The exact J(θ) = mean over prompts of Σ_y π(y|x) R(x, y); ``rewards`` [P, N]."""
        probs = jnp.exp(self.sequence_log_probs(params, prompts, temperature))
        return jnp.mean(jnp.sum(probs * rewards, axis=1))

    def kl(self, params: jax.Array, ref_params: jax.Array, prompts: jax.Array) -> jax.Array:
        """The exact KL(π_θ(·|x) ‖ π_ref(·|x)) over whole completions, averaged over prompts."""
        log_p = self.sequence_log_probs(params, prompts)
        log_ref = self.sequence_log_probs(ref_params, prompts)
        return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_ref), axis=1))

    def index(self, tokens: np.ndarray) -> np.ndarray:
        """The row of ``completions()`` of each completion in ``tokens`` [B, T]."""
        table = {tuple(row): i for i, row in enumerate(self.completions()[0])}
        return np.array([table[tuple(int(t) for t in row)] for row in np.asarray(tokens)])

    def rewards(self, prompts: jax.Array, reward_fn: Callable[[Any, Any, Any], float]) -> np.ndarray:
        """The reward table [P, N]: ``reward_fn(prompt, tokens, length)`` for every completion."""
        tokens, mask = self.completions()
        return np.array([[reward_fn(np.asarray(p), t[:m.sum()], int(m.sum()))
                          for t, m in zip(tokens, mask)] for p in np.asarray(prompts)], float)

    def loss_moments(self, params: jax.Array, prompts: jax.Array, rewards: jax.Array,
                     group_size: int, *, behaviour: jax.Array | None = None,
                     ref: jax.Array | None = None, **options: Any) -> tuple[np.ndarray, float]:
        """The exact mean and total variance of −∇θ ``loss`` over batches of ``group_size``
        completions per prompt, by enumerating every batch (N^B of them: keep P·K ≤ 4).

        ``behaviour``: sample from π_μ with this table (the loss gets ``behaviour_logp``);
        ``ref``: the reference table for the KL options; other ``options`` go to ``loss``.
        Returns (E[ĝ] as a flat [num_prefixes·V] vector, E‖ĝ − E ĝ‖²).
        """
        prompts = check_prompts(prompts)
        tokens, mask = self.completions()
        n, steps = mask.shape
        rows = prompts.shape[0] * group_size
        if n ** rows > 200_000:
            raise ValueError(f"{n}^{rows} batches are too many to enumerate: use fewer prompts "
                             "or a smaller group")

        def per_token(table):
            return np.asarray(self.token_log_probs(table, prompts), np.float64)

        logp = per_token(params)
        sampler = logp if behaviour is None else per_token(behaviour)
        ref_logp = None if ref is None else per_token(ref)
        scores = jax.jacrev(lambda p: self.token_log_probs(p, prompts))(params)
        scores = np.asarray(scores, np.float64).reshape(prompts.shape[0], n, steps, -1)
        batches = np.array(list(itertools.product(range(n), repeat=rows)))
        prompt = np.repeat(np.arange(prompts.shape[0]), group_size)
        prob = np.exp(sampler.sum(-1)[prompt, batches].sum(-1))

        tables = {name: jnp.asarray(table, jnp.float32) for name, table in
                  (("logp", logp), ("behaviour_logp", None if behaviour is None else sampler),
                   ("ref_logp", ref_logp), ("rewards", rewards), ("mask", mask))
                  if table is not None}
        rows_prompt = jnp.asarray(prompt)

        def coefficients(index):
            extra = {name: tables[name][rows_prompt, index] for name in
                     ("behaviour_logp", "ref_logp") if name in tables}
            return -jax.grad(lambda x: loss(
                x, tables["rewards"][rows_prompt, index], tables["mask"][index],
                group_size=group_size, runtime_checks=False, **extra, **options)
            )(tables["logp"][rows_prompt, index])

        # Inputs are finite by construction: no run-time guard (under vmap it would copy every
        # batch's arrays to the host once).
        coef = jax.jit(jax.vmap(coefficients))(jnp.asarray(batches))
        coef = np.asarray(coef, np.float64)
        draws = sum(np.einsum("st,std->sd", coef[:, i], scores[p][batches[:, i]])
                    for i, p in enumerate(prompt))
        mean = prob @ draws
        variance = float(prob @ np.sum((draws - mean) ** 2, axis=1))
        return mean, variance
