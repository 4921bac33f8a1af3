"""sample_cached (the key-value cache) against the plain sampler on a flax transformer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import sequences


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


def test_decode_logits_equal_teacher_forced_logits(transformer):
    model, params, prompts = transformer
    forced = model.apply({"params": params}, prompts)
    cache = model.init(jax.random.key(0), prompts, decode=True)["cache"]
    cache = jax.tree.map(jnp.zeros_like, cache)
    for t in range(prompts.shape[1]):
        logits, variables = model.apply({"params": params, "cache": cache}, prompts[:, t:t + 1],
                                        decode=True, mutable=["cache"])
        cache = variables["cache"]
        np.testing.assert_allclose(logits[:, 0], forced[:, t], atol=1e-4)


def test_same_logits_fn_object_for_the_same_model(transformer):
    model = transformer[0]
    assert sequences.flax_logits_fn(model) is sequences.flax_logits_fn(model)


def test_errors(transformer):
    model, params, prompts = transformer
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        sequences.sample_cached(model, params, prompts, jax.random.key(0), max_new_tokens=0)
    with pytest.raises(ValueError, match="eos_id must be None or a token id"):
        sequences.sample_cached(model, params, prompts, jax.random.key(0), max_new_tokens=2,
                                eos_id=1.5)


@pytest.mark.slow  # two scanned programs and their gradients to compile
def test_log_probs_cached_equals_the_teacher_forced_pass(transformer):
    """Values and gradients: each prompt's positions computed once for its K rows."""
    model, params, prompts = transformer
    roll = sequences.sample_cached(model, params, prompts, jax.random.key(3), max_new_tokens=5,
                                   num_samples=4, temperature=0.7, eos_id=0)
    rewards = jax.random.normal(jax.random.key(4), (12,))
    plain = lambda p: sequences.log_probs(sequences.flax_logits_fn(model), p, prompts, roll)  # noqa: E731
    cached = lambda p: sequences.log_probs_cached(model, p, prompts, roll)  # noqa: E731
    np.testing.assert_allclose(cached(params), plain(params), atol=1e-5)

    def gradient(log_probs_of):
        return jax.jit(jax.grad(lambda p: sequences.loss(log_probs_of(p), rewards, roll.mask,
                                                         group_size=4, advantage="grpo")))(params)

    for a, b in zip(jax.tree.leaves(gradient(cached)), jax.tree.leaves(gradient(plain))):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())))
    with pytest.raises(ValueError, match="differs from the rollout's sampling temperature"):
        sequences.log_probs_cached(model, params, prompts, roll, temperature=1.0)
