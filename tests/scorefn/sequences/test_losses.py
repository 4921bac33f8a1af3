"""sequences.loss: advantages and weights by hand, masking, equal groups, metrics, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import guards, sequences

REWARDS = jnp.array([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])  # 3 groups of 2; the middle one all equal
MASK = jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
LOGP = -jnp.abs(jax.random.normal(jax.random.key(0), MASK.shape)) - 0.1


def test_group_advantages_by_hand():
    r = jnp.array([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])  # groups of 3
    np.testing.assert_allclose(sequences.group_advantages(r, 3, "rloo"),
                               [1 - 4, 2 - 3.5, 6 - 1.5, 0, 0, 0])
    np.testing.assert_allclose(sequences.group_advantages(r, 3, "dr_grpo"), [-2, -1, 3, 0, 0, 0])
    std = np.std([1, 2, 6], ddof=1)
    np.testing.assert_allclose(sequences.group_advantages(r, 3, "grpo"),
                               np.array([-2, -1, 3, 0, 0, 0]) / (std + 1e-4), rtol=1e-6)
    centred = np.array([-2, -1, 3, 0, 0, 0])
    np.testing.assert_allclose(sequences.group_advantages(r, 3, "reinforce_pp"),
                               centred / (centred.std() + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(sequences.group_advantages(r, 3, "none"), r)


def test_token_weights_by_hand():
    m = MASK.astype(float)
    w = lambda a: np.asarray(sequences.token_weights(MASK, 2, a))  # noqa: E731
    np.testing.assert_allclose(w("sequence_sum"), np.full((6, 3), 1 / 6))
    np.testing.assert_allclose(w("constant"), np.full((6, 3), 1 / 18))
    np.testing.assert_allclose(w("sequence_mean"), 1 / (6 * m.sum(1, keepdims=True)) * np.ones((6, 3)))
    np.testing.assert_allclose(w("token_mean"), np.full((6, 3), 1 / 12))
    group_tokens = np.repeat([3, 5, 4], 2)[:, None]
    np.testing.assert_allclose(w("token_mean_per_group"), 1 / (3 * group_tokens) * np.ones((6, 3)))


@pytest.mark.parametrize("advantage", sequences.ADVANTAGES)
@pytest.mark.parametrize("aggregation", sequences.AGGREGATIONS)
def test_masked_positions_change_nothing(advantage, aggregation):
    """NaN, +inf or large values where the mask is 0, in every log-probability input, leave the
    loss, its gradient and the metrics as they are with zeros there."""
    off = MASK == 0
    options = dict(group_size=2, advantage=advantage, aggregation=aggregation, clip=(0.2, 0.2),
                   kl_coef=0.1, kl_in="loss", kl_estimator="k3")

    def value_and_grad(logp, behaviour, ref):
        f = lambda lp: sequences.loss_and_metrics(lp, REWARDS, MASK, behaviour_logp=behaviour,  # noqa: E731
                                                  ref_logp=ref, **options)
        (value, metrics), grad = jax.value_and_grad(f, has_aux=True)(logp)
        return value, np.where(off, 0, grad), metrics

    clean = value_and_grad(jnp.where(off, 0.0, LOGP), LOGP - 0.05, LOGP + 0.1)
    dirty = value_and_grad(jnp.where(off, jnp.nan, LOGP), jnp.where(off, jnp.inf, LOGP - 0.05),
                           jnp.where(off, 7.0, LOGP + 0.1))
    np.testing.assert_allclose(dirty[0], clean[0], rtol=1e-6)
    np.testing.assert_allclose(dirty[1], clean[1], rtol=1e-6)
    assert np.all(np.isfinite(dirty[1]))
    for name in clean[2]:
        np.testing.assert_allclose(dirty[2][name], clean[2][name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("advantage", ["rloo", "grpo", "dr_grpo", "reinforce_pp"])
def test_equal_groups_give_no_signal_and_no_nan(advantage):
    rewards = jnp.array([2.0, 2.0, 2.0, 2.0])
    f = lambda lp: sequences.loss_and_metrics(lp, rewards, MASK[:4], group_size=2,  # noqa: E731
                                              advantage=advantage)
    (value, metrics), grad = jax.value_and_grad(f, has_aux=True)(LOGP[:4])
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0)
    assert int(metrics["zero_variance_groups"]) == 2 and float(metrics["advantage_abs"]) == 0
    _, metrics = sequences.loss_and_metrics(LOGP, REWARDS, MASK, group_size=2, advantage=advantage)
    assert int(metrics["zero_variance_groups"]) == 1


def test_metrics():
    behaviour = LOGP + jnp.array([[0.5, 0, 0], [0, 0, 0], [0, 0, 0], [-0.5, 0, 0], [0, 0, 0],
                                  [0, 0, 0]])
    _, m = sequences.loss_and_metrics(LOGP, REWARDS, MASK, group_size=2, behaviour_logp=behaviour,
                                      clip=(0.2, 0.2), ref_logp=LOGP - 0.3)
    # Token 0 of row 0: ratio e^-0.5 < 0.8 with A < 0 binds; row 3 (A = 0) never binds.
    assert float(m["clip_fraction"]) == pytest.approx(1 / 12)
    assert float(m["kl"]) == pytest.approx(0.3 * 12 / 6, rel=1e-5)
    assert float(m["length"]) == pytest.approx(12 / 6)
    assert float(m["entropy"]) == pytest.approx(-float(jnp.sum(LOGP * MASK)) / 6, rel=1e-5)
    _, on_policy = sequences.loss_and_metrics(LOGP, REWARDS, MASK, group_size=2)
    assert float(on_policy["ess_fraction"]) == pytest.approx(1.0)
    assert float(m["ess_fraction"]) < 1.0


def test_on_policy_value_is_the_aggregated_negative_advantage():
    value = lambda a: float(sequences.loss(LOGP, REWARDS, MASK, group_size=2, advantage="none",  # noqa: E731
                                           aggregation=a))
    assert value("sequence_mean") == pytest.approx(-float(jnp.mean(REWARDS)))
    assert value("sequence_sum") == pytest.approx(-float(jnp.mean(REWARDS * MASK.sum(1))))


@pytest.mark.parametrize("change, message", [
    (dict(group_size=4), "not a multiple of group_size=4"),
    (dict(group_size=0), "group_size must be an int >= 1"),
    (dict(group_size=1), "needs group_size >= 2"),
    (dict(advantage="ppo"), "advantage must be one of"),
    (dict(advantage=jnp.zeros(5)), "an advantage array must have shape"),
    (dict(aggregation="mean"), "aggregation must be one of"),
    (dict(ratio="seq"), "ratio must be one of"),
    (dict(clip=0.2), "clip must be None or"),
    (dict(clip=(1.0, 0.2)), "clip must be None or"),
    (dict(kl_coef=0.1), "kl_coef > 0 needs ref_logp"),
    (dict(kl_coef=float("nan"), ref_logp=LOGP), r"kl_coef must be a finite number in \[0, ∞\)"),
    (dict(kl_coef=-0.1, ref_logp=LOGP), r"kl_coef must be a finite number in \[0, ∞\)"),
    (dict(entropy_coef=float("nan")), "entropy_coef must be a finite number, got nan"),
    (dict(advantage="grpo", std_eps=-1.0), r"std_eps must be a finite number in \[0, ∞\)"),
    (dict(kl_estimator="k4"), "kl_estimator must be one of"),
    (dict(kl_in="advantage"), "kl_in must be one of"),
    (dict(rewards=jnp.zeros((6, 1))), r"rewards must have shape \(6,\)"),
    (dict(mask=MASK[:, :2]), r"mask must have shape \(6, 3\)"),
    (dict(behaviour_logp=LOGP[:3]), r"behaviour_logp must have shape \(6, 3\)"),
])
def test_errors_name_the_argument(change, message):
    kwargs = dict(logp=LOGP, rewards=REWARDS, mask=MASK, group_size=2) | change
    with pytest.raises(ValueError, match=message):
        sequences.loss(**kwargs)


@pytest.mark.parametrize("where, message", [
    ("rewards", "rewards holds a non-finite value"),
    ("logp", "logp holds a non-finite value"),
    ("positive", "logp holds a value > 0 where the mask is 1"),
])
def test_bad_values_raise_under_jit(where, message):
    rewards = REWARDS.at[1].set(jnp.nan) if where == "rewards" else REWARDS
    logp = {"logp": LOGP.at[0, 1].set(jnp.nan), "positive": LOGP - LOGP + 0.5}.get(where, LOGP)
    step = jax.jit(jax.grad(lambda lp, r: sequences.loss(lp, r, MASK, group_size=2)))
    with pytest.raises(jax.errors.JaxRuntimeError) as info:
        jax.block_until_ready(step(logp, rewards))
    assert message in str(info.value).strip().splitlines()[-1]  # jax's text ends with ours
    with pytest.raises(ValueError, match=message), guards.runtime_errors():
        jax.block_until_ready(step(logp, rewards))
    with pytest.raises(ValueError, match=message):
        sequences.loss(logp, rewards, MASK, group_size=2)  # eagerly: scorefn's ValueError
