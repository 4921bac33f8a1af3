"""scorefn.guards: run-time checks that fire under jit and vmap, with scorefn's message."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import scorefn


def test_runtime_errors_unwraps_a_check_that_fires_under_jit(caplog):
    """Under the user's own jit, a run-time check arrives as jax's JaxRuntimeError; inside
    scorefn.guards.runtime_errors it is the ValueError scorefn wrote, and jax logs no
    second copy of its traceback."""
    import logging

    def dist_fn(p):
        return dist.Normal(p["mu"], 1.0)

    step = jax.jit(lambda p, k: scorefn.grad(lambda x: jnp.log(x), dist_fn, p, k, 64))
    params, key = {"mu": jnp.asarray(0.0)}, jax.random.key(0)
    with pytest.raises(jax.errors.JaxRuntimeError):
        jax.block_until_ready(step(params, key))
    with caplog.at_level(logging.ERROR):
        with pytest.raises(ValueError, match="my step: f returned .* non-finite"):
            with scorefn.guards.runtime_errors("my step"):
                jax.block_until_ready(step(params, key))
    assert not [r for r in caplog.records if "callback failed" in r.getMessage()]


def test_runtime_errors_unwraps_the_fast_path_form_of_a_later_call():
    """Once a jitted function has run, jax's C++ fast path raises a check's error with the
    callback's own type (ValueError) and jax's wrapped text: runtime_errors unwraps it too,
    so a loop whose step fails after good steps gets scorefn's message, not jax's."""
    def dist_fn(p):
        return dist.Normal(p["mu"], 1.0)

    step = jax.jit(lambda p, k, c: scorefn.grad(lambda x: jnp.log(jnp.abs(x) + c), dist_fn, p,
                                                k, 64))
    params, key = {"mu": jnp.asarray(0.0)}, jax.random.key(0)
    for _ in range(2):
        jax.block_until_ready(step(params, key, jnp.asarray(1.0)))
    with pytest.raises(ValueError, match="CpuCallback error"):  # what jax raises there
        jax.block_until_ready(step(params, key, jnp.asarray(-1e9)))
    with pytest.raises(ValueError, match="^step 3: f returned 64 non-finite") as caught:
        with scorefn.guards.runtime_errors("step 3"):
            jax.block_until_ready(step(params, key, jnp.asarray(-1e9)))
    assert "CpuCallback" not in str(caught.value)
    # another ValueError passes through unchanged
    with pytest.raises(ValueError, match="^not a check$"):
        with scorefn.guards.runtime_errors("step 3"):
            raise ValueError("not a check")


@pytest.mark.parametrize("text", [
    # the CPU's form: the host traceback, then the exception's line
    "INTERNAL: CpuCallback error calling callback: Traceback (most recent call last):\n"
    '  File "validation.py", line 192, in on_host\nValueError: f returned 1 non-finite value',
    # the exception's line alone after the prefix, as a GPU's callback may report it
    "INTERNAL: CpuCallback error calling callback: ValueError: f returned 1 non-finite value",
    "INTERNAL: Generated function failed: CpuCallback error calling callback: ValueError: "
    "f returned 1 non-finite value\n\nAt:\n  validation.py(192): on_host",
])
def test_runtime_errors_reads_every_form_of_the_wrapped_error(text):
    original = scorefn.guards.original_error(jax.errors.JaxRuntimeError(text))
    assert type(original) is ValueError
    assert str(original) == "f returned 1 non-finite value"
    # anything else is left to jax
    assert scorefn.guards.original_error(jax.errors.JaxRuntimeError(
        "INTERNAL: RET_CHECK failure ValueError: not ours")) is None


@pytest.mark.parametrize("case", ["normal_scale_0", "probs_above_1", "dirichlet_zero", "to_event"])
def test_invalid_distribution_arguments_are_errors_under_jit(case):
    """Outside its constraint a distribution's argument makes the estimate NaN or wrong
    without a word; under jit the run-time guard names the argument and the constraint
    (eagerly numpyro's own validation says it first)."""
    dist_fn, params, match = {
        "normal_scale_0": (lambda p: dist.Normal(p["a"], p["b"]),
                           {"a": jnp.asarray(0.0), "b": jnp.asarray(0.0)},
                           r"dist_fn\(params\).scale is outside its constraint Positive"),
        "probs_above_1": (lambda p: dist.Bernoulli(probs=p["a"]), {"a": jnp.asarray(1.5)},
                          r"\.probs is outside its constraint UnitInterval.*the first 1.5"),
        "dirichlet_zero": (lambda p: dist.Dirichlet(p["a"]), {"a": jnp.array([1.0, 0.0, 2.0])},
                           r"\.concentration .* Positive: 1 of 3 .* at index \(1,\)"),
        "to_event": (lambda p: dist.Normal(p["a"], p["b"]).to_event(1),
                     {"a": jnp.zeros(3), "b": -jnp.ones(3)}, r"base_dist.scale .* 3 of 3"),
    }[case]
    step = jax.jit(lambda p: scorefn.grad(lambda x: jnp.sum(x**2), dist_fn, p,
                                          jax.random.key(0), 16))
    with pytest.raises(ValueError, match=match):
        with scorefn.guards.runtime_errors():
            jax.block_until_ready(step(params))
    with pytest.raises(ValueError):
        scorefn.grad(lambda x: jnp.sum(x**2), dist_fn, params, jax.random.key(0), 16)


def test_the_runtime_check_under_vmap_reads_the_batch_once_and_names_the_bad_element():
    """Under jax.vmap the check's cond is a select that always runs its host branch: it must
    run once for the whole batch (not once per element) and judge only failing elements."""
    calls = []

    def message(values):
        calls.append(values.shape)
        return None if np.all(np.isfinite(values)) else f"bad values {values.tolist()}"

    def checked(x):
        return x + scorefn.guards.finite_guard((x, message))

    run = jax.jit(jax.vmap(jax.vmap(checked)))
    x = jnp.arange(24.0).reshape(4, 3, 2)
    np.testing.assert_array_equal(run(x), x)
    assert calls == []  # every element finite: no message is even computed
    with pytest.raises(ValueError, match=r"bad values \[4.0, nan\]"):
        with scorefn.guards.runtime_errors():
            jax.block_until_ready(run(x.at[0, 2, 1].set(jnp.nan)))
    assert calls == [(2,)]  # the one failing element, read alone


def test_nonfinite_message():
    message = scorefn.guards.nonfinite_message(lambda *found: found)
    values = np.zeros((5, 2))
    assert message(values) is None
    values[3, 1], values[4, 0] = np.inf, np.nan
    assert message(values) == ("inf", 3, 2, 5)


def _normal(p):
    return dist.Normal(p["mu"], jnp.ones(3))


def _bernoulli(p):
    return dist.Bernoulli(logits=p["mu"])


def _categorical(p):
    return dist.Categorical(logits=p["mu"])


_MU = {"mu": jnp.array([0.1, -0.2, 0.3])}


def _sample_and_values(key):
    x = scorefn.sample(_normal, _MU, key, 8)
    return x, jnp.sum(x, axis=-1)


def _core(estimator, dist_fn=_normal, num_samples=8, **options):
    def make(checks):
        return lambda key: scorefn.grad(lambda x: jnp.sum(x), dist_fn, _MU, key, num_samples,
                                        estimator=estimator, runtime_checks=checks, **options)
    return make


def _score_grad(checks):
    def fn(key):
        x, v = _sample_and_values(key)
        return scorefn.score_grad(_normal, _MU, x, v, runtime_checks=checks)
    return fn


def _is_score_grad(checks):
    def fn(key):
        x, v = _sample_and_values(key)
        return scorefn.importance.is_score_grad(_normal, _MU, x, v, _normal(_MU),
                                                on_low_ess="ignore", runtime_checks=checks)
    return fn


def _mis_score_grad(checks):
    def fn(key):
        x, v = _sample_and_values(key)
        return scorefn.importance.mis_score_grad(_normal, _MU, [x], [v], [_normal(_MU)],
                                                 runtime_checks=checks)
    return fn


def _enumerate_grad(checks):
    def fn(key):
        return scorefn.rao_blackwell.enumerate_grad(
            lambda a, b: a + b, lambda p: dist.Normal(p["mu"][0], 1.0),
            lambda p, a: dist.Bernoulli(logits=p["mu"][1] * a), _MU, key, 8,
            runtime_checks=checks)
    return fn


def _sequence_loss(checks):
    def fn(key):
        logp = -jax.random.uniform(key, (4, 3))
        return jax.grad(lambda lp: scorefn.sequences.loss(
            lp, jnp.arange(4.0), jnp.ones((4, 3)), group_size=2, runtime_checks=checks))(logp)
    return fn


def _search_gradient(checks):
    strategy = scorefn.es.SNES(popsize=8)
    state = strategy.init(jax.random.key(1), jnp.zeros(3), 1.0)

    def fn(key):
        x = jax.random.normal(key, (8, 3))
        return strategy.search_gradient(state, x, jnp.arange(8.0), runtime_checks=checks)
    return fn


def _policy_gradient(checks):
    from scorefn import rl

    env = rl.make("CartPole-v1")
    policy = rl.ActorCritic(env.action_space, hidden=(8,))
    params = policy.init(jax.random.key(0), env.obs_shape)

    def fn(key):
        obs = jax.random.normal(key, (6, 4))
        actions = jnp.arange(6) % 2
        return rl.policy_gradient(policy, params["policy"], obs, actions, jnp.ones(6),
                                  runtime_checks=checks)
    return fn


def _elbo_grad(checks):
    from scorefn import vi

    def model():
        import numpyro
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("x", dist.Normal(z, 1.0), obs=0.5)

    m = vi.as_model(model)
    guide = vi.guides.auto_guide(m)
    params = guide.init()
    return lambda key: vi.elbo_grad(m, guide, params, key, estimator="score", num_samples=4,
                                    runtime_checks=checks).grad


CHECKED = {
    "score_grad": _score_grad,
    "grad score": _core("score"),
    "grad pathwise": _core("pathwise"),
    "grad measure_valued": _core("measure_valued"),
    "grad disarm": _core("disarm", _bernoulli),
    "grad gumbel_softmax": _core("gumbel_softmax", _bernoulli),
    "grad rebar": _core("rebar", _bernoulli),
    "grad sum_and_sample": _core("sum_and_sample", _categorical, num_samples=2),
    "is_score_grad": _is_score_grad,
    "mis_score_grad": _mis_score_grad,
    "enumerate_grad": _enumerate_grad,
    "sequences.loss": _sequence_loss,
    "es search_gradient": _search_gradient,
    "rl.policy_gradient": _policy_gradient,
    "vi.elbo_grad": _elbo_grad,
}


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_runtime_checks_false_leaves_no_host_callback(name):
    """Every function with a run-time check takes runtime_checks and honours it: on, the
    traced program holds the check's host callback; off, none (the training loops rely on
    it to export and cache their programs). The "on" half is the planted twin: a jaxpr
    search that could not see a callback would fail it."""
    def callbacks(checks):
        return str(jax.make_jaxpr(CHECKED[name](checks))(jax.random.key(0))).count("callback")

    assert callbacks(True) > 0
    assert callbacks(False) == 0
