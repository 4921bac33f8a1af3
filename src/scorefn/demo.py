r"""``scorefn demo``: the log-derivative trick worked through on p_θ = N(μ, σ²).

1. The score functions ∂μ log p = (x - μ)/σ² and ∂σ log p = -1/σ + (x - μ)²/σ³, checked
   against autodiff on a few samples.
2. E[score] = 0, shown with its standard error.
3. Bias, variance and SNR of every estimator and baseline against the analytic gradient, for
   f(x) = x² (∇ = (2μ, 2σ)) and the non-differentiable f(x) = 1[x > 0]
   (∇ = (φ(μ/σ)/σ, -φ(μ/σ) μ/σ²)).
4. A PNG of each estimator's variance against the number of samples.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.stats import norm
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scorefn import baselines, control_variates
from scorefn.diagnostics import compare
from scorefn.sampling import sample
from scorefn.scores import per_sample_scores

MU, SIGMA = 0.5, 1.5


def dist_fn(params):
    return dist.Normal(params["mu"], params["sigma"])


def square(x):
    return x**2


def step(x):
    return (x > 0).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class DemoProblem:
    label: str
    f: object
    true_grad: dict
    differentiable: bool


def problems() -> list[DemoProblem]:
    t = MU / SIGMA
    return [
        DemoProblem("f(x) = x²", square, {"mu": 2 * MU, "sigma": 2 * SIGMA}, True),
        DemoProblem(
            "f(x) = 1[x > 0]", step,
            {"mu": float(norm.pdf(t)) / SIGMA, "sigma": -float(norm.pdf(t)) * MU / SIGMA**2},
            False,
        ),
    ]


def estimators_for(problem: DemoProblem) -> dict[str, dict]:
    choices = {
        "score": {},
        "score + ema(0.9)": {"baseline": baselines.ema(0.9)},
        "score + leave_one_out": {"baseline": baselines.leave_one_out()},
        "score + optimal": {"baseline": baselines.optimal()},
        "score + score CV": {"control_variate": control_variates.score()},
    }
    if problem.differentiable:
        choices["score + delta_method"] = {"control_variate": control_variates.delta_method(square)}
        choices["pathwise"] = {"estimator": "pathwise"}
    return choices


def _params():
    return {"mu": jnp.asarray(MU), "sigma": jnp.asarray(SIGMA)}


def score_check(console: Console, key) -> float:
    params = _params()
    x = sample(dist_fn, params, key, 5)
    autodiff = per_sample_scores(dist_fn, params, x)
    analytic_mu = (x - MU) / SIGMA**2
    analytic_sigma = -1 / SIGMA + (x - MU) ** 2 / SIGMA**3
    table = Table(title=f"score functions of N(μ={MU}, σ={SIGMA}): analytic vs autodiff")
    for column in ("x", "(x-μ)/σ²", "autodiff ∂μ", "-1/σ + (x-μ)²/σ³", "autodiff ∂σ"):
        table.add_column(column, justify="right")
    for i in range(x.shape[0]):
        table.add_row(*(f"{float(v):+.6f}" for v in (
            x[i], analytic_mu[i], autodiff["mu"][i], analytic_sigma[i], autodiff["sigma"][i])))
    console.print(table)
    error = max(float(jnp.max(jnp.abs(analytic_mu - autodiff["mu"]))),
                float(jnp.max(jnp.abs(analytic_sigma - autodiff["sigma"]))))
    console.print(f"max |analytic - autodiff| = {error:.2e}\n")
    return error


def expected_score(console: Console, key, num_samples: int) -> dict[str, tuple[float, float]]:
    params = _params()
    x = sample(dist_fn, params, key, num_samples)
    scores = per_sample_scores(dist_fn, params, x)
    out = {}
    for name in ("mu", "sigma"):
        g = np.asarray(scores[name], np.float64)
        out[name] = (float(g.mean()), float(g.std(ddof=1) / math.sqrt(num_samples)))
    console.print(
        escape(f"E[score] over {num_samples:,} samples: "
        + ", ".join(f"∂{'μ' if k == 'mu' else 'σ'}: {m:+.4f} ± {s:.4f} (z = {m / s:+.2f})"
                    for k, (m, s) in out.items())
        + "   (zero within its standard error)\n")
    )
    return out


def wide_console() -> Console:
    """A console at least 110 columns wide, so tables are not cut in logs and pipes."""
    console = Console()
    return console if console.width >= 110 else Console(width=110)


def run_demo(
    out_dir: str | Path = "scorefn-demo",
    *,
    seed: int = 0,
    num_samples: int = 100,
    num_repeats: int = 400,
    sample_sizes: tuple[int, ...] = (10, 30, 100, 300, 1000),
    console: Console | None = None,
) -> dict:
    """Run the demo, print its tables and save ``variance_vs_samples.png`` in ``out_dir``."""
    console = console or wide_console()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(seed)
    k_check, k_mean, k_cmp, k_curve = jax.random.split(key, 4)
    console.rule("[bold]scorefn demo:[/bold] " + escape("∇θ E_{x~N(μ,σ²)}[f(x)] = E[f(x) ∇θ log p_θ(x)]"))
    score_error = score_check(console, k_check)
    mean_score = expected_score(console, k_mean, 100_000)

    demo_problems = problems()
    tables = {}
    curves: dict[str, dict[str, list[float]]] = {}
    total = sum(len(estimators_for(p)) for p in demo_problems) * (1 + len(sample_sizes))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    with progress:
        task = progress.add_task("estimators", total=total)
        for index, problem in enumerate(demo_problems):
            choices = estimators_for(problem)
            tables[problem.label] = []
            for name, options in choices.items():
                progress.update(task, description=f"{problem.label}: {name}, N = {num_samples}")
                table = compare(problem.f, dist_fn, _params(), jax.random.fold_in(k_cmp, index),
                                num_samples=num_samples, num_repeats=num_repeats,
                                estimators={name: options}, reference=problem.true_grad,
                                print_table=False)
                tables[problem.label].extend(table.reports)
                progress.advance(task)
                for n in sample_sizes:
                    progress.update(task, description=f"{problem.label}: {name}, N = {n}")
                    report = compare(problem.f, dist_fn, _params(),
                                     jax.random.fold_in(k_curve, index * 1000 + n),
                                     num_samples=n, num_repeats=num_repeats,
                                     estimators={name: options}, reference=problem.true_grad,
                                     print_table=False).reports[0]
                    curves.setdefault(problem.label, {}).setdefault(name, []).append(
                        report.total_variance)
                    progress.advance(task)

    from scorefn.diagnostics import ComparisonTable

    results = {}
    for problem in demo_problems:
        table = ComparisonTable(
            tables[problem.label],
            title=problem.label + f": true ∇ = (∂μ {problem.true_grad['mu']:.4f}, "
                  f"∂σ {problem.true_grad['sigma']:.4f}), N = {num_samples}, "
                  f"{num_repeats} repeats",
        )
        table.print(console)
        results[problem.label] = table.rows()
    plot_path = out_dir / "variance_vs_samples.png"
    plot_variance_curves(curves, sample_sizes, plot_path)
    console.print(escape(
        "\nColumns: ‖bias‖ of the mean estimate; max|z| = largest |bias| / standard error (below "
        "~4 is consistent with no bias); variance = total variance of one estimate; ÷ first = "
        "variance relative to the plain score estimator; SNR = mean |E ĝ| / sd(ĝ)."
    ))
    console.print(f"[bold]saved[/bold] {plot_path}")
    return {"score_error": score_error, "expected_score": mean_score, "tables": results,
            "curves": curves, "plot": str(plot_path)}


def plot_variance_curves(curves, sample_sizes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), squeeze=False)
    for ax, (label, by_estimator) in zip(axes[0], curves.items()):
        styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "--"), ("P", "-"),
                  ("X", "-.")]
        for (marker, line), (name, variances) in zip(styles, by_estimator.items()):
            ax.loglog(sample_sizes, variances, marker=marker, linestyle=line, label=name)
        ax.set_title(f"{label}, p = N({MU}, {SIGMA}²)")
        ax.set_xlabel("number of samples N")
        ax.set_ylabel("total variance of one gradient estimate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
