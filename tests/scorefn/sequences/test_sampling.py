"""sequences.sample and sequences.log_probs against the tabular policy's exact probabilities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sequence_oracle as so
from scipy import stats

from scorefn import sequences

PROMPTS = jnp.asarray(so.PROMPTS)


def _frequencies(world, roll):
    index = world.policy.index(np.asarray(roll.tokens))
    prompt = np.repeat([0, 1], roll.tokens.shape[0] // 2)
    counts = np.zeros((2, world.num_completions))
    np.add.at(counts, (prompt, index), 1)
    return counts


def test_completions_are_distributed_as_the_policy(world):
    """Chi-square of 2 × 20,000 completions at temperature 0.7 against the exact
    probabilities; the twin (the probabilities at temperature 1) is rejected."""
    roll = sequences.sample(world.policy.logits_fn, world.params, PROMPTS, jax.random.key(3),
                            max_new_tokens=3, num_samples=20_000, temperature=0.7, eos_id=0)
    counts = _frequencies(world, roll)

    def p_value(temperature):
        probs = np.exp(np.asarray(world.policy.sequence_log_probs(world.params, PROMPTS,
                                                                  temperature), float))
        chi2 = ((counts - 20_000 * probs) ** 2 / (20_000 * probs)).sum()
        return stats.chi2.sf(chi2, df=2 * (world.num_completions - 1))

    assert p_value(0.7) > 1e-4
    assert p_value(1.0) < 1e-6


def test_rollout_log_probs_mask_and_padding(world):
    roll = sequences.sample(world.policy.logits_fn, world.params, PROMPTS, jax.random.key(4),
                            max_new_tokens=3, num_samples=3000, temperature=0.7, eos_id=0)
    tokens, mask, logp = (np.asarray(a) for a in (roll.tokens, roll.mask, roll.logp))
    assert tokens.shape == mask.shape == logp.shape == (6000, 3)
    first_eos = np.where((tokens == 0).any(1), (tokens == 0).argmax(1) + 1, 3)
    np.testing.assert_array_equal(mask, np.arange(3)[None] < first_eos[:, None])
    np.testing.assert_array_equal(np.asarray(roll.lengths), first_eos)
    assert np.all(tokens[mask == 0] == 0) and np.all(logp[mask == 0] == 0)
    # Every completion seen, its log-probabilities exact (temperature included).
    exact = np.asarray(world.policy.token_log_probs(world.params, PROMPTS, 0.7))
    index, prompt = world.policy.index(tokens), np.repeat([0, 1], 3000)
    np.testing.assert_allclose(logp, exact[prompt, index], atol=1e-5)
    assert len(set(zip(prompt, index))) == 2 * world.num_completions


def test_same_key_same_rollout_and_no_eos(world):
    args = (world.policy.logits_fn, world.params, PROMPTS)
    a = sequences.sample(*args, jax.random.key(5), max_new_tokens=3, num_samples=8)
    b = sequences.sample(*args, jax.random.key(5), max_new_tokens=3, num_samples=8)
    c = sequences.sample(*args, jax.random.key(6), max_new_tokens=3, num_samples=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert np.all(np.asarray(a.mask) == 1)  # no eos_id: every completion has T tokens
    # A Rollout is a pytree whose temperature is static: it passes through jit.
    out = jax.jit(lambda r: r)(a)
    assert isinstance(out, sequences.Rollout) and out.temperature == 1.0


def test_log_probs_exact_and_differentiable(world):
    """log π of given completions by hand from the table's softmax, and its gradient: the
    tabular score (1[v = y_t] − softmax_v)/τ on the prefix's row."""
    tokens = jnp.array([[2, 1, 0], [1, 0, 0], [2, 2, 2], [0, 0, 0]])
    temperature = 0.5
    logp = sequences.log_probs(world.policy.logits_fn, world.params, PROMPTS, tokens,
                               temperature=temperature)
    table = np.asarray(world.params, float)
    policy = world.policy
    for row, (prompt, seq) in enumerate(zip([1, 1, 2, 2], np.asarray(tokens))):
        prefix = [prompt]
        for t, token in enumerate(seq):
            logits = np.asarray(policy.logits_fn(world.params, jnp.array([prefix])))[0, -1]
            expected = jax.nn.log_softmax(logits / temperature)[token]
            assert abs(float(logp[row, t]) - float(expected)) < 1e-5
            prefix.append(int(token))
    jac = jax.jacrev(lambda p: sequences.log_probs(policy.logits_fn, p, PROMPTS, tokens,
                                                   temperature=temperature)[0, 1])(world.params)
    prefix_row = int(np.argmax(np.abs(np.asarray(jac)).sum(1)))
    probs = np.asarray(jax.nn.softmax(table[prefix_row] / temperature))
    np.testing.assert_allclose(np.asarray(jac)[prefix_row], (np.eye(3)[1] - probs) / temperature,
                               atol=1e-5)
    assert np.count_nonzero(np.abs(np.asarray(jac)).sum(1)) == 1


def test_a_rollout_is_scored_at_its_own_temperature(world):
    roll = sequences.sample(world.policy.logits_fn, world.params, PROMPTS, jax.random.key(7),
                            max_new_tokens=3, num_samples=4, temperature=0.6, eos_id=0)
    logp = sequences.log_probs(world.policy.logits_fn, world.params, PROMPTS, roll)
    np.testing.assert_allclose(np.where(roll.mask, logp, 0), roll.logp, atol=1e-5)
    with pytest.raises(ValueError, match="differs from the rollout's sampling temperature 0.6"):
        sequences.log_probs(world.policy.logits_fn, world.params, PROMPTS, roll, temperature=1.0)


@pytest.mark.parametrize("change, message", [
    (dict(prompts=jnp.array([1, 2])), "prompts must be an integer array of shape"),
    (dict(prompts=jnp.array([[1.0]])), "prompts must be an integer array"),
    (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (dict(num_samples=2.0), "num_samples must be an int >= 1"),
    (dict(temperature=0.0), "temperature must be finite and > 0"),
    (dict(temperature=jnp.array(1.0)), "temperature must be a Python number"),
    (dict(eos_id=-1), "eos_id must be None or a token id"),
    (dict(eos_id=3), "eos_id 3 is not a token of this vocabulary .*vocab_size is 3"),
    (dict(logits_fn=lambda p, t: p[t][:, -1]), "logits_fn must map tokens of shape"),
])
def test_sample_errors_name_the_argument(world, change, message):
    kwargs = dict(logits_fn=world.policy.logits_fn, params=world.params, prompts=PROMPTS,
                  key=jax.random.key(0), max_new_tokens=3, num_samples=2, temperature=1.0,
                  eos_id=0) | change
    with pytest.raises(ValueError, match=message):
        sequences.sample(**kwargs)


def test_log_probs_errors(world):
    with pytest.raises(ValueError, match="not a multiple of the 2 prompts"):
        sequences.log_probs(world.policy.logits_fn, world.params, PROMPTS, jnp.zeros((3, 3), int))
    with pytest.raises(ValueError, match="tokens must be an integer array"):
        sequences.log_probs(world.policy.logits_fn, world.params, PROMPTS, jnp.zeros((2, 3)))
