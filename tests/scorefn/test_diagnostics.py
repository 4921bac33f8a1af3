"""Diagnostics report bias, variance, SNR and cost; compare() tabulates them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from closed_forms import normal_square
from rich.console import Console

import scorefn
from scorefn import diagnostics


def test_evaluate_estimator_flags_a_planted_bias_and_not_the_unbiased_one():
    problem = normal_square()

    def unbiased(k):
        return scorefn.grad(problem.f, problem.dist_fn, problem.params, k, 50)

    def biased(k):
        return jax.tree.map(lambda g: 0.8 * g, unbiased(k))

    good = diagnostics.evaluate_estimator(unbiased, problem.true_grad, jax.random.key(0),
                                          num_repeats=1000, num_samples=50, name="plain")
    bad = diagnostics.evaluate_estimator(biased, problem.true_grad, jax.random.key(0),
                                         num_repeats=1000, num_samples=50, name="planted")
    assert good.max_abs_z < 4
    assert bad.max_abs_z > 4
    assert good.variance.shape == (6,) and good.total_variance == pytest.approx(good.variance.sum())
    assert good.seconds_per_estimate > 0
    assert np.all(good.snr > 0)
    per_coordinate = good.unravel(good.variance)
    assert per_coordinate["loc"].shape == (3,)


def test_summarize_known_numbers():
    estimates = {"w": jnp.array([[1.0, 0.0], [3.0, 0.0]])}
    report = diagnostics.summarize("x", estimates, {"w": jnp.array([1.0, 0.0])}, num_samples=1)
    np.testing.assert_allclose(report.mean, [2.0, 0.0])
    np.testing.assert_allclose(report.bias, [1.0, 0.0])
    np.testing.assert_allclose(report.variance, [2.0, 0.0])
    np.testing.assert_allclose(report.z, [1.0, 0.0])  # 1 / sqrt(2 / 2)
    np.testing.assert_allclose(report.snr[0], 2 / np.sqrt(2))
    # the zero-variance coordinate is counted as exact, not averaged in as inf
    assert report.exact_coordinates == 1 and report.mean_snr == pytest.approx(2 / np.sqrt(2))
    assert report.snr_text == "1.41 (1 exact)"
    table = diagnostics.ComparisonTable([report])
    assert "1.41 (1 exact)" in table.to_markdown() and "inf" not in table.to_markdown()
    console = Console(record=True, width=140)
    console.print(table.rich_table())
    text = " ".join(console.export_text().split())
    assert "1.41 (1 exact)" in text and "exact: zero variance" in text
    constant = diagnostics.summarize("c", {"w": jnp.ones((3, 2))}, {"w": jnp.ones(2)},
                                     num_samples=1)
    assert constant.snr_text == "exact" and np.isnan(constant.mean_snr)


@pytest.mark.slow
def test_compare_default_table_with_and_without_reference():
    problem = normal_square()
    console = Console(record=True, width=140)
    table = scorefn.compare(problem.f, problem.dist_fn, problem.params, jax.random.key(1),
                            num_samples=50, num_repeats=200, reference=problem.true_grad,
                            console=console)
    names = [r.name for r in table.reports]
    assert names[0] == "score"
    assert {"score + leave_one_out", "score + optimal", "score + delta_method", "pathwise"} <= set(names)
    text = console.export_text()
    assert "score + leave_one_out" in text and "µs/est" in text
    for report in table.reports:
        assert report.max_abs_z < 4, report.name
    assert table["score + optimal"].total_variance < table["score"].total_variance
    markdown = table.to_markdown()
    assert markdown.count("\n") == len(names) + 3  # header, rule, rows, a blank and the note
    rows = table.rows()
    assert rows[0]["variance_ratio"] == pytest.approx(1.0)

    estimated = scorefn.compare(
        problem.f, problem.dist_fn, problem.params, jax.random.key(2), num_samples=50,
        num_repeats=200, print_table=False,
        estimators={"loo": {"baseline": scorefn.baselines.leave_one_out()},
                    "halved": {"baseline": scorefn.baselines.batch_mean(), "max_norm": 0.5}},
    )
    assert estimated["loo"].max_abs_z < 4
    assert estimated["loo"].unbiased and not estimated["halved"].unbiased
    assert estimated["halved"].max_abs_z > 4
    with pytest.raises(KeyError, match="no estimator named"):
        estimated["nope"]


def test_compare_reports_bad_problems_clearly():
    problem = normal_square()
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        scorefn.compare(problem.f, problem.dist_fn, problem.params, 0)
    with pytest.raises(ValueError, match="num_samples must be an int >= 2"):
        scorefn.compare(problem.f, problem.dist_fn, problem.params, jax.random.key(0),
                        num_samples=1)
    with pytest.raises(ValueError, match="num_repeats must be an int >= 2, got 0"):  # was: 1/0
        scorefn.compare(problem.f, problem.dist_fn, problem.params, jax.random.key(0),
                        num_repeats=0)
