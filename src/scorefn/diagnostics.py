r"""Diagnostics: how good is a gradient estimator on *your* problem?

Given an estimator ``key -> gradient pytree`` and a reference gradient ∇ (closed form, or a
many-sample estimate), R independent estimates ĝ_1..ĝ_R give, per parameter coordinate j:

    bias_j     = mean_r ĝ_rj - ∇_j                  z_j = bias_j / sqrt(var_j / R + se_ref_j²)
    var_j      = sample variance of ĝ_rj             (variance of ONE estimate)
    snr_j      = |mean_r ĝ_rj| / sqrt(var_j)          (Rainforth et al. 2018)

plus the total variance Σ_j var_j and the wall time per estimate (median of repeats, after
compilation). ``compare`` runs several estimator/baseline choices side by side and
prints a rich table.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from scorefn import baselines as baselines_lib
from scorefn import control_variates as cv_lib
from scorefn import registry, validation
from scorefn.estimators import grad, score_grad
from scorefn.sampling import sample


@dataclasses.dataclass
class EstimatorReport:
    """Bias, variance, SNR and cost of one estimator over ``num_repeats`` estimates.

    Arrays are flat over the parameters in ``jax.flatten_util.ravel_pytree`` order;
    ``unravel`` maps one back to the parameter pytree.
    """

    name: str
    num_samples: int
    num_repeats: int
    mean: np.ndarray
    bias: np.ndarray
    variance: np.ndarray
    z: np.ndarray
    snr: np.ndarray
    seconds_per_estimate: float
    unbiased: bool | None = None
    unravel: Callable[[Any], Any] | None = dataclasses.field(default=None, repr=False)

    @property
    def total_variance(self) -> float:
        return float(np.sum(self.variance))

    @property
    def bias_norm(self) -> float:
        return float(np.linalg.norm(self.bias))

    @property
    def max_abs_z(self) -> float:
        return float(np.max(np.abs(self.z)))

    @property
    def exact_coordinates(self) -> int:
        """Coordinates with zero variance over the repeats (the same estimate every time;
        their SNR is inf)."""
        return int(np.sum(self.variance == 0))

    @property
    def mean_snr(self) -> float:
        """The mean SNR over the coordinates that vary (nan when none does); the exact ones
        are counted by ``exact_coordinates`` instead of turning the mean into inf."""
        noisy = self.variance > 0
        return float(np.mean(self.snr[noisy])) if noisy.any() else float("nan")

    @property
    def snr_text(self) -> str:
        """The mean SNR as a table shows it: "exact" when no coordinate varies, and the
        number of exact coordinates beside the mean when some do not."""
        if self.exact_coordinates == self.variance.size:
            return "exact"
        exact = f" ({self.exact_coordinates} exact)" if self.exact_coordinates else ""
        return f"{self.mean_snr:.3g}{exact}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "estimator": self.name,
            "unbiased": self.unbiased,
            "num_samples": self.num_samples,
            "num_repeats": self.num_repeats,
            "bias_norm": self.bias_norm,
            "max_abs_z": self.max_abs_z,
            "total_variance": self.total_variance,
            "mean_snr": self.mean_snr,
            "exact_coordinates": self.exact_coordinates,
            "snr_text": self.snr_text,
            "seconds_per_estimate": self.seconds_per_estimate,
        }


def summarize(
    name: str,
    estimates: Any,
    reference: Any,
    *,
    num_samples: int,
    seconds_per_estimate: float = float("nan"),
    reference_se: Any = None,
    unbiased: bool | None = None,
) -> EstimatorReport:
    """Build a report from R stacked estimates (each leaf with a leading R axis)."""
    flat_ref, unravel = ravel_pytree(reference)
    flat = np.asarray(jax.vmap(lambda e: ravel_pytree(e)[0])(estimates), dtype=np.float64)
    num_repeats = flat.shape[0]
    if num_repeats < 2:
        raise ValueError("need at least 2 estimates to measure a variance")
    mean = flat.mean(0)
    variance = flat.var(0, ddof=1)
    bias = mean - np.asarray(flat_ref, np.float64)
    se2 = variance / num_repeats
    if reference_se is not None:
        se2 = se2 + np.asarray(ravel_pytree(reference_se)[0], np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se2 > 0, bias / np.sqrt(se2), np.where(bias == 0, 0.0, np.inf))
        snr = np.where(variance > 0, np.abs(mean) / np.sqrt(variance), np.inf)
    return EstimatorReport(
        name=name,
        num_samples=num_samples,
        num_repeats=num_repeats,
        mean=mean,
        bias=bias,
        variance=variance,
        z=z,
        snr=snr,
        seconds_per_estimate=seconds_per_estimate,
        unbiased=unbiased,
        unravel=unravel,
    )


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    out = jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return out, float(np.median(times))


def repeated_estimates(
    estimator: Callable[[jax.Array], Any], key: jax.Array, num_repeats: int
) -> Callable[[], Any]:
    """A compiled thunk returning ``num_repeats`` independent estimates, stacked.

    The estimates run in sequence (``lax.map``): as fast as a ``vmap`` over keys on CPU
    here, in a fraction of the compile time and memory.
    """
    keys = jax.random.split(key, num_repeats)
    run = jax.jit(lambda ks: jax.lax.map(estimator, ks))
    return lambda: run(keys)


def evaluate_estimator(
    estimator: Callable[[jax.Array], Any],
    reference: Any,
    key: jax.Array,
    *,
    num_repeats: int = 500,
    num_samples: int = 0,
    name: str = "estimator",
    reference_se: Any = None,
    unbiased: bool | None = None,
    timing_repeats: int = 3,
) -> EstimatorReport:
    """Run a jittable ``estimator(key) -> gradient`` ``num_repeats`` times and report
    bias, variance, SNR and the median wall time per estimate against ``reference``."""
    validation.check_key(key)
    thunk = repeated_estimates(estimator, key, num_repeats)
    estimates, seconds = timed(thunk, timing_repeats)
    return summarize(
        name,
        estimates,
        reference,
        num_samples=num_samples,
        seconds_per_estimate=seconds / num_repeats,
        reference_se=reference_se,
        unbiased=unbiased,
    )


_SNR_NOTE = ("SNR: the mean over the coordinates that vary; exact: zero variance over the "
             "repeats (the same estimate every time)")


@dataclasses.dataclass
class ComparisonTable:
    """The reports of ``compare``, one per estimator, printable with rich."""

    reports: list[EstimatorReport]
    title: str = "gradient estimators"

    def __getitem__(self, name: str) -> EstimatorReport:
        for report in self.reports:
            if report.name == name:
                return report
        raise KeyError(f"no estimator named {name!r}; have {[r.name for r in self.reports]}")

    def rows(self) -> list[dict[str, Any]]:
        base = self.reports[0].total_variance if self.reports else float("nan")
        rows = []
        for report in self.reports:
            row = report.as_dict()
            row["variance_ratio"] = report.total_variance / base if base > 0 else float("nan")
            rows.append(row)
        return rows

    def rich_table(self):
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(self.title), caption=_SNR_NOTE)
        table.add_column("estimator", no_wrap=True)
        for column in ("unbiased", "‖bias‖", "max|z|", "variance", "÷ first", "SNR", "µs/est"):
            table.add_column(column, justify="right", no_wrap=True)
        for row in self.rows():
            table.add_row(
                escape(row["estimator"]),
                {True: "yes", False: "no", None: "?"}[row["unbiased"]],
                f"{row['bias_norm']:.3g}",
                f"{row['max_abs_z']:.2f}",
                f"{row['total_variance']:.4g}",
                f"{row['variance_ratio']:.3g}",
                row["snr_text"],
                f"{row['seconds_per_estimate'] * 1e6:.1f}",
            )
        return table

    def to_markdown(self) -> str:
        lines = [
            "| estimator | unbiased | bias norm | max abs z | variance (total) | vs first | "
            "mean SNR | µs / estimate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows():
            lines.append(
                f"| {row['estimator']} | {row['unbiased']} | {row['bias_norm']:.3g} | "
                f"{row['max_abs_z']:.2f} | {row['total_variance']:.4g} | "
                f"{row['variance_ratio']:.3g} | {row['snr_text']} | "
                f"{row['seconds_per_estimate'] * 1e6:.1f} |"
            )
        return "\n".join(lines + ["", _SNR_NOTE])

    def print(self, console=None) -> None:
        from rich.console import Console

        if console is None:
            console = Console()
            console = console if console.width >= 110 else Console(width=110)
        console.print(self.rich_table())


def default_estimators(f: Callable, dist_fn: Callable, params: Any) -> dict[str, dict[str, Any]]:
    """The choices ``compare`` tries when none are given."""
    d = dist_fn(params)
    choices: dict[str, dict[str, Any]] = {
        "score": {},
        "score + ema(0.9)": {"baseline": baselines_lib.ema(0.9)},
        "score + leave_one_out": {"baseline": baselines_lib.leave_one_out()},
        "score + optimal": {"baseline": baselines_lib.optimal()},
    }
    try:
        shape = tuple(d.batch_shape) + tuple(d.event_shape)
        mean = jnp.broadcast_to(d.mean, shape).astype(jnp.result_type(float))
        jax.eval_shape(jax.hessian(f), mean)
        if cv_lib.delta_method_supports(d):
            choices["score + delta_method"] = {"control_variate": cv_lib.delta_method(f)}
    except Exception:  # f not differentiable in JAX or no usable covariance: skip it
        pass
    if d.has_rsample:
        choices["pathwise"] = {"estimator": "pathwise"}
    from scorefn.measure_valued import supports

    if supports(d):
        choices["measure_valued"] = {"estimator": "measure_valued"}
    return choices


def _ema_estimates(f, dist_fn, params, key, num_samples, num_repeats, ema, warmup=20):
    """EMA baselines are stateful: estimates run in sequence, each after updating the state."""

    def step(state, k):
        x = sample(dist_fn, params, k, num_samples)
        values = jax.vmap(f)(x)
        g = score_grad(dist_fn, params, x, values, baseline=state, validate=False)
        return ema.update(values, state), g

    keys = jax.random.split(key, num_repeats + warmup)

    @jax.jit
    def run(ks):
        state, _ = jax.lax.scan(step, ema.init(), ks[:warmup])
        _, estimates = jax.lax.scan(step, state, ks[warmup:])
        return estimates

    return lambda: run(keys)


def compare(
    f: Callable,
    dist_fn: Callable,
    params: Any,
    key: jax.Array,
    *,
    num_samples: int = 100,
    num_repeats: int = 500,
    estimators: Mapping[str, Mapping[str, Any]] | None = None,
    reference: Any = None,
    print_table: bool = True,
    console=None,
) -> ComparisonTable:
    """Compare estimator/baseline choices on your own f and p_θ.

    Each entry of ``estimators`` maps a name to keyword arguments of ``scorefn.grad``
    (``estimator``, ``baseline``, ``control_variate``, ``standardize``...); a baseline
    ``scorefn.baselines.ema(decay)`` is run statefully, in sequence. ``reference`` is the true
    gradient if you know it; otherwise it is estimated from 4 × ``num_repeats`` independent
    leave-one-out score-function estimates, and its standard error enters the z-scores.

    Returns a ``ComparisonTable`` (and prints it with rich unless ``print_table=False``).
    """
    validation.check_key(key)
    num_samples = validation.check_int(num_samples, "num_samples", 2)
    validation.check_int(num_repeats, "num_repeats", 2)  # a variance needs two estimates
    if estimators is None:
        estimators = default_estimators(f, dist_fn, params)
    ref_key, key = jax.random.split(key)
    reference_se = None
    if reference is None:

        def reference_estimator(k):
            return grad(f, dist_fn, params, k, num_samples,
                        baseline=baselines_lib.leave_one_out(), validate=False)

        stacked = repeated_estimates(reference_estimator, ref_key, 4 * num_repeats)()
        reference = jax.tree.map(lambda e: jnp.mean(e, 0), stacked)
        reference_se = jax.tree.map(
            lambda e: jnp.std(e, 0, ddof=1) / math.sqrt(e.shape[0]), stacked
        )
    # Check the inputs once, eagerly, so that a bad problem fails with a clear message here.
    grad(f, dist_fn, params, key, num_samples)
    reports = []
    for index, (name, options) in enumerate(estimators.items()):
        options = dict(options)
        k = jax.random.fold_in(key, index)
        baseline = options.get("baseline")
        if isinstance(baseline, baselines_lib.Ema):
            thunk = _ema_estimates(f, dist_fn, params, k, num_samples, num_repeats, baseline)
            unbiased = True
        else:
            options.setdefault("validate", False)  # inputs were checked once above

            def estimator(kk, options=options):
                return grad(f, dist_fn, params, kk, num_samples, **options)

            thunk = repeated_estimates(estimator, k, num_repeats)
            unbiased = _claimed_unbiased(options)
        estimates, seconds = timed(thunk)
        reports.append(
            summarize(name, estimates, reference, num_samples=num_samples,
                      seconds_per_estimate=seconds / num_repeats,
                      reference_se=reference_se, unbiased=unbiased)
        )
    table = ComparisonTable(
        reports, title=f"gradient estimators, N = {num_samples} samples, {num_repeats} repeats"
    )
    if print_table:
        table.print(console)
    return table


def _claimed_unbiased(options: Mapping[str, Any]) -> bool:
    if options.get("standardize") or options.get("max_norm") is not None:
        return False
    if not registry.estimator(options.get("estimator", "score")).unbiased:
        return False
    baseline = baselines_lib.as_baseline(options.get("baseline"))
    if baseline is not None and not baseline.unbiased:
        return False
    control_variate = options.get("control_variate")
    return control_variate is None or control_variate.unbiased
