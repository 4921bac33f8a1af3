"""Baselines keep the score-function estimator unbiased and lower its variance."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from closed_forms import (
    ALL_PROBLEMS,
    assert_unbiased,
    detects_bias,
    normal_square,
    repeated,
    repeated_ema,
    variance_z,
)

import scorefn
from scorefn import baselines

UNBIASED_BASELINES = {
    "constant": lambda: baselines.constant(1.0),
    "leave_one_out": baselines.leave_one_out,
    "optimal": baselines.optimal,
}


@pytest.mark.parametrize("name", list(UNBIASED_BASELINES))
@pytest.mark.parametrize("make_problem", ALL_PROBLEMS, ids=lambda m: m.__name__)
def test_baseline_keeps_estimator_unbiased(make_problem, name):
    problem = make_problem()
    estimates = repeated(problem, jax.random.key(11), 50, 2000, baseline=UNBIASED_BASELINES[name]())
    assert_unbiased(estimates, problem.true_grad)


@pytest.mark.parametrize("make_problem", ALL_PROBLEMS, ids=lambda m: m.__name__)
def test_ema_baseline_keeps_estimator_unbiased(make_problem):
    problem = make_problem()
    estimates = repeated_ema(problem, jax.random.key(12), 50, 2000, decay=0.9)
    assert_unbiased(estimates, problem.true_grad)


def test_ema_with_warmup_and_without_debiasing_keeps_estimator_unbiased():
    problem = normal_square()
    estimates = repeated_ema(problem, jax.random.key(13), 50, 2000, decay=0.9, warmup=True,
                             zero_debias=False)
    assert_unbiased(estimates, problem.true_grad)


@pytest.mark.parametrize(
    "biased, unbiased",
    [(baselines.batch_mean(), baselines.leave_one_out()),
     (baselines.optimal("batch"), baselines.optimal("leave_one_out"))],
    ids=["batch_mean", "optimal_batch"],
)
def test_batch_reuse_bias_is_measured_and_leave_one_out_removes_it(biased, unbiased):
    """With N = 5 the batch versions' O(1/N) bias is visible; leave-one-out has none."""
    problem = normal_square()
    with_bias = repeated(problem, jax.random.key(6), 5, 4000, baseline=biased)
    without = repeated(problem, jax.random.key(6), 5, 4000, baseline=unbiased)
    assert detects_bias(with_bias, problem.true_grad)
    assert_unbiased(without, problem.true_grad)
    assert not biased.unbiased and unbiased.unbiased


def test_batch_mean_is_leave_one_out_shrunk_by_n_minus_one_over_n(key):
    problem = normal_square()
    a = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8,
                     baseline=baselines.batch_mean())
    b = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 8,
                     baseline=baselines.leave_one_out())
    np.testing.assert_allclose(a["loc"], b["loc"] * 7 / 8, rtol=1e-5)


def test_leave_one_out_values():
    values = jnp.array([1.0, 2.0, 6.0])
    np.testing.assert_allclose(baselines.leave_one_out()(values), [4.0, 3.5, 1.5])
    with pytest.raises(ValueError, match="num_samples >= 2"):
        baselines.leave_one_out()(jnp.array([1.0]))


def test_optimal_baseline_formula():
    values = jnp.array([1.0, 2.0, 3.0])
    scores = {"w": jnp.array([[1.0], [2.0], [0.0]])}
    batch = baselines.optimal("batch")(values, scores)["w"]
    np.testing.assert_allclose(batch[:, 0], [(1 * 1 + 2 * 4) / 5] * 3)
    loo = baselines.optimal()(values, scores)["w"]
    # Leaving out sample 0: (2·4 + 3·0) / (4 + 0) = 2; sample 1: 1/1 = 1; sample 2: 9/5.
    np.testing.assert_allclose(loo[:, 0], [2.0, 1.0, 9 / 5])


def test_ema_state_is_bias_corrected_and_explicit():
    ema = baselines.ema(0.5)
    state = ema.init()
    assert float(state.value) == 0.0
    state = ema.update(jnp.array([4.0, 4.0]), state)
    assert float(state.value) == pytest.approx(4.0)  # corrected: not 0.5 · 4
    state = ema.update(jnp.array([0.0]), state)
    # raw: 0.5·2 + 0 = 1; correction 1 - 0.25 = 0.75
    assert float(state.value) == pytest.approx(1 / 0.75)
    assert int(state.count) == 2
    with pytest.raises(ValueError, match="decay"):
        baselines.ema(1.0)
    with pytest.raises(TypeError, match="warmup must be a bool"):
        baselines.ema(0.9, warmup=1)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_zero_debiasing_and_warmup_schedule(warmup):
    """Debiased, a constant signal c gives b = c from the first update on (with the warm-up
    schedule too); raw, b = c (1 - Π β_t); the schedule β_t = min(β, (1 + t)/(10 + t))."""
    debiased = baselines.ema(0.9, warmup=warmup)
    raw = baselines.ema(0.9, zero_debias=False, warmup=warmup)
    s_debiased, s_raw, kept = debiased.init(), raw.init(), 1.0
    for t in range(30):  # t: the updates before this one
        s_debiased = debiased.update(jnp.full(4, 3.0), s_debiased)
        s_raw = raw.update(jnp.full(4, 3.0), s_raw)
        kept *= min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
        assert float(s_debiased.value) == pytest.approx(3.0, rel=1e-5)
        assert float(s_raw.value) == pytest.approx(3.0 * (1 - kept), rel=1e-5)
    # the schedule forgets an early outlier faster
    early = [baselines.ema(0.9, warmup=w) for w in (False, True)]
    states = [e.update(jnp.array([100.0]), e.init()) for e in early]
    for _ in range(10):
        states = [e.update(jnp.array([0.0]), s) for e, s in zip(early, states)]
    assert float(states[1].value) < 0.2 * float(states[0].value)


def test_ema_warmup_is_optaxs_schedule_by_hand():
    """optax's former moving_avg_baseline: β_i = min(decay, (1 + i)/(10 + i)) with i the
    updates before this one, so 1/10, 2/11, 3/12 on the first three; its raw update
    a ← β_i a + (1 - β_i) m is ours with zero_debias=False, and debiased we divide by the
    weight on data 1 - Π β."""
    means = [2.0, -1.0, 5.0]
    betas = [1 / 10, 2 / 11, 3 / 12]
    raw, debiased = baselines.ema(0.9, zero_debias=False, warmup=True), baselines.ema(
        0.9, warmup=True)
    s_raw, s_debiased, a, kept = raw.init(), debiased.init(), 0.0, 1.0
    for m, beta in zip(means, betas):
        s_raw = raw.update(jnp.array([m - 1.0, m + 1.0]), s_raw)
        s_debiased = debiased.update(jnp.array([m - 1.0, m + 1.0]), s_debiased)
        a, kept = beta * a + (1 - beta) * m, kept * beta
        assert float(s_raw.value) == pytest.approx(a, rel=1e-6)
        assert float(s_debiased.value) == pytest.approx(a / (1 - kept), rel=1e-6)
    # the twin the fix removed: the schedule one step ahead (2/11, 3/12, 4/13) is caught
    a_ahead = 0.0
    for m, beta in zip(means, [2 / 11, 3 / 12, 4 / 13]):
        a_ahead = beta * a_ahead + (1 - beta) * m
    assert abs(float(s_raw.value) - a_ahead) > 0.1


def test_ema_state_built_by_hand_has_no_weight():
    state = baselines.EmaState(jnp.asarray(1.8), jnp.asarray(2, jnp.int32), jnp.asarray(0.0))
    # β^2 = 0.81 of the weight still on the zero start: a debiased update divides by 1 - 0.729
    new = baselines.ema(0.9).update(jnp.array([1.0]), state)
    assert float(new.value) == pytest.approx((0.9 * 1.8 + 0.1) / (1 - 0.9**3), rel=1e-6)


def test_ema_state_as_baseline_equals_constant(key):
    problem = normal_square()
    state = baselines.ema(0.9).update(jnp.array([2.5]), baselines.ema(0.9).init())
    a = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 16, baseline=state)
    b = scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 16, baseline=2.5)
    np.testing.assert_allclose(a["loc"], b["loc"], rtol=1e-6)


@pytest.fixture(scope="module")
def gaussian_variance_runs():
    problem = normal_square()
    n, r = 500, 2000
    expected_f = float(jnp.sum(problem.params["loc"] ** 2 + jnp.exp(problem.params["log_scale"]) ** 2))
    runs = {
        name: repeated(problem, jax.random.key(20 + i), n, r, baseline=b)
        for i, (name, b) in enumerate(
            [("none", None), ("constant", baselines.constant(expected_f)),
             ("leave_one_out", baselines.leave_one_out()), ("batch_mean", baselines.batch_mean()),
             ("optimal", baselines.optimal())]
        )
    }
    runs["ema"] = repeated_ema(problem, jax.random.key(30), n, r, decay=0.9)
    return runs


@pytest.mark.parametrize("name", ["constant", "leave_one_out", "batch_mean", "optimal", "ema"])
def test_each_baseline_lowers_variance_on_the_gaussian(gaussian_variance_runs, name):
    z = variance_z(gaussian_variance_runs[name], gaussian_variance_runs["none"])
    assert np.all(z < -4), f"variance not lower than without a baseline: z = {np.round(z, 1)}"


@pytest.mark.parametrize("other", ["constant", "leave_one_out", "batch_mean", "ema"])
def test_optimal_baseline_is_lowest_per_coordinate(gaussian_variance_runs, other):
    z = variance_z(gaussian_variance_runs["optimal"], gaussian_variance_runs[other])
    # Never significantly higher on any coordinate, and clearly lower on some.
    assert np.all(z < 2.5), f"optimal baseline has higher variance: z = {np.round(z, 1)}"
    assert np.min(z) < -4, f"optimal baseline not lower anywhere: z = {np.round(z, 1)}"


def test_variance_check_fails_when_variance_is_not_lower(gaussian_variance_runs):
    """The check above is not vacuous: the same test on the plain estimator fails."""
    z = variance_z(gaussian_variance_runs["none"], gaussian_variance_runs["leave_one_out"])
    assert not np.all(z < -4)
    assert math.isfinite(float(np.max(z)))


def test_a_non_finite_baseline_is_an_error_not_a_nan_gradient(key):
    """A NaN baseline with finite f made the estimate NaN without a word. A constant says so
    when it is built; any other (an EMA state gone NaN inside the user's jit) at run time."""
    problem = normal_square()
    with pytest.raises(ValueError, match="the constant baseline must be finite, got nan"):
        baselines.constant(float("nan"))
    with pytest.raises(ValueError, match="the constant baseline must be finite"):
        scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 16, baseline=np.inf)
    state = baselines.ema(0.9).update(jnp.array([2.5]), baselines.ema(0.9).init())

    @jax.jit
    def step(state):
        return scorefn.grad(problem.f, problem.dist_fn, problem.params, key, 16, baseline=state)

    jax.block_until_ready(step(state))
    nan_state = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan)
                             if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    with pytest.raises(ValueError, match="^the gradient estimate has 6 non-finite coordinate.*"
                                         "the baseline or the control variate"):
        with scorefn.guards.runtime_errors():
            jax.block_until_ready(step(nan_state))
    # the same with the run-time checks off: a NaN, as asked (the caller checks its outputs)
    unchecked = jax.jit(lambda b: scorefn.grad(problem.f, problem.dist_fn, problem.params, key,
                                               16, baseline=b, runtime_checks=False))(jnp.nan)
    assert np.isnan(unchecked["loc"]).all()


def test_as_baseline_errors():
    with pytest.raises(TypeError, match="pass its state"):
        baselines.as_baseline(baselines.ema(0.9))
    with pytest.raises(TypeError, match="baseline must be None, a number"):
        baselines.as_baseline("mean")
    with pytest.raises(ValueError, match="mode must be"):
        baselines.optimal("split")


def test_leave_one_out_log_mean_is_vimcos_baseline():
    """L̂_{-k}: the bound with w_k replaced by the geometric mean of the others, written out."""
    log_w = jnp.array([[0.3, -1.0], [2.0, 0.5], [-0.7, 40.0], [1.1, 39.0]])
    out = np.asarray(baselines.leave_one_out_log_mean(log_w))
    lw = np.asarray(log_w, np.float64)
    for k in range(4):
        replaced = lw.copy()
        replaced[k] = np.delete(lw, k, axis=0).mean(0)
        expected = np.log(np.mean(np.exp(replaced - 40.0), axis=0)) + 40.0
        np.testing.assert_allclose(out[k], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="K >= 2"):
        baselines.leave_one_out_log_mean(jnp.zeros(1))


def test_vimco_learning_signal_is_the_bound_minus_its_leave_one_out_version():
    log_w = jnp.array([-1.0, 0.5, -3.0, 0.0])
    w = np.exp(np.asarray(log_w, np.float64))
    k = len(w)
    for j in range(k):
        others = np.delete(np.asarray(log_w, np.float64), j)
        loo = np.log((np.exp(others).sum() + np.exp(others.mean())) / k)
        np.testing.assert_allclose(scorefn.baselines.vimco_learning_signal(log_w)[j],
                                   np.log(w.mean()) - loo, rtol=1e-5)
