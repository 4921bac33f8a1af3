"""gymnasium environments beyond Box observations: encoded with gymnasium's own flatten,
trained and evaluated; unsupported spaces and missing extras are clear errors."""

import jax
import numpy as np
import pytest

from scorefn import rl
from scorefn.rl.envs import GymnasiumEnv, observation_encoder

gym = pytest.importorskip("gymnasium")
spaces = gym.spaces


def test_observation_encoder_shapes():
    shape, encode = observation_encoder(spaces.Discrete(16))
    assert shape == (16,) and np.array_equal(encode(3), np.eye(16, dtype=np.float32)[3])
    blackjack = spaces.Tuple((spaces.Discrete(32), spaces.Discrete(11), spaces.Discrete(2)))
    shape, encode = observation_encoder(blackjack)
    assert shape == (45,) and encode((14, 10, 0)).sum() == 3
    shape, encode = observation_encoder(spaces.Box(-1, 1, (2, 3)))
    assert shape == (2, 3) and encode(np.zeros((2, 3))).dtype == np.float32
    with pytest.raises(ValueError, match="observation space Text.*is not supported"):
        observation_encoder(spaces.Text(5), "SomeEnv")


def test_vector_env_one_hot_observations_and_final_obs():
    env = GymnasiumEnv("FrozenLake-v1", num_envs=3, seed=0)
    obs = env.reset()
    assert obs.shape == (3, 16) and np.all(obs.sum(1) == 1)
    for _ in range(30):
        obs, reward, terminated, truncated, final = env.step(np.zeros(3, np.int64))
        assert obs.shape == final.shape == (3, 16) and np.all(final.sum(1) == 1)
    env.close()


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "Blackjack-v1", "CliffWalking-v1"])
def test_toy_text_envs_train_and_evaluate(env_id):
    result = rl.train(env_id, "ppo", seed=0, total_steps=2048, backend="gymnasium",
                      eval_every=1024, progress=False)
    assert result.env_steps >= 2048 and np.isfinite(result.eval_mean)


def test_missing_extra_names_the_pip_extra(monkeypatch):
    """gymnasium's DependencyNotInstalled (Box2D here) becomes scorefn's ImportError naming
    the pip extra, whether or not Box2D happens to be installed on this machine."""
    def make_vec(env_id, **options):
        raise gym.error.DependencyNotInstalled(
            'Box2D is not installed, you can install it by run `pip install swig` followed by '
            '`pip install "gymnasium[box2d]"`')

    monkeypatch.setattr(gym, "make_vec", make_vec)
    with pytest.raises(ImportError, match=r"pip install 'gymnasium\[box2d\]'"):
        rl.train("LunarLander-v3", "ppo", seed=0, total_steps=1000, backend="gymnasium",
                 progress=False)


def sequential_returns(env_id, policy, params, seed, episodes):
    """The reference: one gymnasium env, one episode after another, one policy call a step."""
    import gymnasium as gym
    import jax.numpy as jnp

    env = gym.make(env_id)
    _, encode = observation_encoder(env.observation_space, env_id)
    limit = int(env.spec.max_episode_steps or 1000)
    totals = []
    act = jax.jit(lambda o: policy.mode(params, o[None])[0])  # one compiled call per step
    for i in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + i)
        total, done, steps = 0.0, False, 0
        while not done and steps < limit:
            steps += 1
            action = np.asarray(act(jnp.asarray(encode(obs))))
            action = int(action) if policy.space.discrete else np.clip(
                action, policy.space.low, policy.space.high)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        totals.append(total)
    return float(np.mean(totals))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "FrozenLake-v1", "Pendulum-v1"])
def test_vectorised_evaluation_equals_episode_by_episode(env_id):
    """The side-by-side episodes give exactly the returns of the sequential episodes (the
    same reset seeds, a deterministic policy), including those that end early."""
    from scorefn.rl.evaluation import evaluate_gymnasium

    result = rl.train(env_id, "ppo", seed=1, total_steps=2048, backend="gymnasium",
                      progress=False, eval_episodes=2)
    policy = result.policy
    params = result.params["policy"]
    fast = evaluate_gymnasium(env_id, policy, params, seed=3, episodes=6)
    assert fast == pytest.approx(sequential_returns(env_id, policy, params, 3, 6), rel=1e-6)


def test_gymnax_before_1_0_is_refused_with_the_fix():
    # gymnax 0.0.9's step merges termination and truncation; a resolver that picks it
    # (gymnax 1.0 needs gymnasium < 1.4) gets this message, not an unpacking error
    with pytest.raises(ImportError, match=r"needs gymnax >= 1.0 .*pip install 'gymnax>=1.0'"):
        rl.envs.check_gymnax_version("0.0.9")
    rl.envs.check_gymnax_version("1.0.1")


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])  # truncations; terminations
def test_one_environment_steps_as_gymnasiums_one_copy_vector_env(env_id):
    """``GymnasiumEnv`` with one copy steps a lone environment (``OneEnv``), not gymnasium's
    ``SyncVectorEnv``: the same observations, rewards, ends and final observations, episode
    boundaries included. Twin: gymnasium's vector env seeded otherwise differs."""
    import gymnasium as gym

    from scorefn.rl.envs import OneEnv

    ours = GymnasiumEnv(env_id, num_envs=1, seed=3)
    assert isinstance(ours.env, OneEnv)
    theirs = GymnasiumEnv(env_id, num_envs=2, seed=3)  # gymnasium's; copy 0 is seeded 3
    other = gym.make_vec(env_id, num_envs=1, vectorization_mode="sync",
                         vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    rng = np.random.default_rng(0)
    first, reference = ours.reset(), theirs.reset()
    np.testing.assert_array_equal(first[0], reference[0])
    assert not np.array_equal(first[0], other.reset(seed=4)[0][0])
    ends = 0
    for _ in range(450):
        if ours.action_space.discrete:
            action = rng.integers(0, 2, 1)
        else:
            action = rng.uniform(-2, 2, (1, 1)).astype(np.float32)
        got = ours.step(action)
        want = theirs.step(np.concatenate([action, action]))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a[0], b[0])
        ends += int(got[2][0] or got[3][0])
    assert ends >= 2
    ours.close(), theirs.close(), other.close()
