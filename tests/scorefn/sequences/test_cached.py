"""sample_cached and log_probs_cached (the key-value cache) against the plain sampler and the
teacher-forced pass, on CausalTransformer (decode calls of any length) and on a model built on
flax's MultiHeadDotProductAttention (one token per decode call)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import sequences


class OneTokenDecoder(nn.Module):
    """One attention layer with flax's own cache, which reads one token per decode call."""

    vocab_size: int = 12
    features: int = 16

    @nn.compact
    def __call__(self, tokens, decode=False):
        embed = nn.Embed(self.vocab_size, self.features)
        if decode:
            # flax's cache counts positions per layer; the embedding needs them too
            initialised = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            positions = position.value + jnp.arange(tokens.shape[1])
            if initialised:
                position.value = position.value + tokens.shape[1]
        else:
            positions = jnp.arange(tokens.shape[1])
        x = embed(tokens) + nn.Embed(32, self.features)(positions)[None]
        mask = None if decode else nn.make_causal_mask(tokens)
        x = x + nn.MultiHeadDotProductAttention(2, decode=decode)(x, mask=mask)
        return embed.attend(x)


@pytest.fixture(scope="module")
def one_token_decoder():
    model = OneTokenDecoder()
    params = model.init(jax.random.key(5), jnp.zeros((1, 4), jnp.int32))["params"]
    return model, params, jax.random.randint(jax.random.key(6), (2, 4), 1, 12)


@pytest.fixture(scope="module")
def transformer():
    model = sequences.CausalTransformer(vocab_size=12, max_length=32, num_layers=2, num_heads=2,
                                        features=32)
    params = model.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))["params"]
    prompts = jax.random.randint(jax.random.key(1), (3, 6), 1, 12)
    return model, params, prompts


@pytest.mark.parametrize("eos_id", [None, 0])
def test_cached_sampler_draws_what_the_plain_one_draws(transformer, eos_id):
    model, params, prompts = transformer
    options = dict(max_new_tokens=10, num_samples=4, temperature=0.8, eos_id=eos_id)
    plain = sequences.sample(sequences.flax_logits_fn(model), params, prompts, jax.random.key(2),
                             **options)
    cached = sequences.sample_cached(model, params, prompts, jax.random.key(2), **options)
    np.testing.assert_array_equal(cached.tokens, plain.tokens)
    np.testing.assert_array_equal(cached.mask, plain.mask)
    np.testing.assert_allclose(cached.logp, plain.logp, atol=1e-5)
    assert cached.temperature == 0.8 and cached.tokens.shape == (12, 10)
    # and the training path scores them as drawn
    logp = sequences.log_probs(sequences.flax_logits_fn(model), params, prompts, cached)
    np.testing.assert_allclose(np.where(cached.mask, logp, 0), cached.logp, atol=1e-5)


def test_decode_by_one_token_or_several_equals_teacher_forced_logits(transformer):
    """CausalTransformer's decode calls take one token or any number (chunked_decode)."""
    model, params, prompts = transformer
    forced = model.apply({"params": params}, prompts)
    cache = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0), prompts, decode=True)["cache"])
    start = 0
    for size in (1, 1, 3, 1):
        logits, variables = model.apply({"params": params, "cache": cache},
                                        prompts[:, start:start + size], decode=True,
                                        mutable=["cache"])
        cache = variables["cache"]
        np.testing.assert_allclose(logits, forced[:, start:start + size], atol=1e-4)
        start += size


def test_logits_to_keep_gives_the_last_positions_logits(transformer):
    model, params, prompts = transformer
    forced = model.apply({"params": params}, prompts)
    np.testing.assert_allclose(model.apply({"params": params}, prompts, logits_to_keep=2),
                               forced[:, -2:], atol=1e-5)
    cache = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0), prompts, decode=True)["cache"])
    logits, _ = model.apply({"params": params, "cache": cache}, prompts, decode=True,
                            logits_to_keep=1, mutable=["cache"])
    np.testing.assert_allclose(logits, forced[:, -1:], atol=1e-4)
    for bad in (0, 7):
        with pytest.raises(ValueError, match=rf"logits_to_keep must be None or an int from 1 to "
                                             rf"the number of tokens \(6\), got {bad}"):
            model.apply({"params": params}, prompts, logits_to_keep=bad)


@pytest.mark.slow  # the scanned fallbacks' programs and gradients to compile
def test_one_token_decoder_samples_and_scores_as_the_plain_path(one_token_decoder):
    """A model whose decode calls take one token: the prompt read one position per call."""
    model, params, prompts = one_token_decoder
    assert not getattr(model, "chunked_decode", False)
    options = dict(max_new_tokens=4, num_samples=3, temperature=0.9, eos_id=0)
    plain = sequences.sample(sequences.flax_logits_fn(model), params, prompts, jax.random.key(7),
                             **options)
    cached = sequences.sample_cached(model, params, prompts, jax.random.key(7), **options)
    np.testing.assert_array_equal(cached.tokens, plain.tokens)
    np.testing.assert_allclose(cached.logp, plain.logp, atol=1e-5)
    rewards = jax.random.normal(jax.random.key(8), (6,))

    def gradient(log_probs_of):
        return jax.grad(lambda p: sequences.loss(log_probs_of(p), rewards, cached.mask,
                                                 group_size=3))(params)

    forced = gradient(lambda p: sequences.log_probs(sequences.flax_logits_fn(model), p, prompts,
                                                    cached))
    through_cache = gradient(lambda p: sequences.log_probs_cached(model, p, prompts, cached))
    for a, b in zip(jax.tree.leaves(through_cache), jax.tree.leaves(forced)):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def test_same_logits_fn_object_for_the_same_model(transformer):
    model = transformer[0]
    assert sequences.flax_logits_fn(model) is sequences.flax_logits_fn(model)


def test_errors(transformer):
    model, params, prompts = transformer
    with pytest.raises(ValueError, match=r"features \(30\) must be a multiple of num_heads \(4\)"):
        sequences.CausalTransformer(vocab_size=12, max_length=8, num_heads=4, features=30).init(
            jax.random.key(0), prompts)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        sequences.sample_cached(model, params, prompts, jax.random.key(0), max_new_tokens=0)
    with pytest.raises(ValueError, match="eos_id must be None or a token id"):
        sequences.sample_cached(model, params, prompts, jax.random.key(0), max_new_tokens=2,
                                eos_id=1.5)
    with pytest.raises(ValueError, match="eos_id 12 is not a token of this vocabulary"):
        sequences.sample_cached(model, params, prompts, jax.random.key(0), max_new_tokens=2,
                                eos_id=12)  # vocab_size 12: it would never be drawn


def test_log_probs_cached_equals_the_teacher_forced_pass(transformer):
    """Values and gradients: each prompt's positions computed once for its K rows."""
    model, params, prompts = transformer
    roll = sequences.sample_cached(model, params, prompts, jax.random.key(3), max_new_tokens=5,
                                   num_samples=4, temperature=0.7, eos_id=0)
    rewards = jax.random.normal(jax.random.key(4), (12,))

    def values_and_gradient(log_probs_of):  # one compiled program each: values as aux
        def objective(p):
            logp = log_probs_of(p)
            return sequences.loss(logp, rewards, roll.mask, group_size=4, advantage="grpo"), logp

        return jax.jit(jax.grad(objective, has_aux=True))(params)

    cached_grad, cached_logp = values_and_gradient(
        lambda p: sequences.log_probs_cached(model, p, prompts, roll))
    plain_grad, plain_logp = values_and_gradient(
        lambda p: sequences.log_probs(sequences.flax_logits_fn(model), p, prompts, roll))
    np.testing.assert_allclose(cached_logp, plain_logp, atol=1e-5)
    for a, b in zip(jax.tree.leaves(cached_grad), jax.tree.leaves(plain_grad)):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))
    with pytest.raises(ValueError, match="differs from the rollout's sampling temperature"):
        sequences.log_probs_cached(model, params, prompts, roll, temperature=1.0)
