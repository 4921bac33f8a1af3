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

from scorefn import baselines, control_variates, fisher, importance
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


def _check_table(title: str, rows: list[tuple[str, float, float, float | None]]) -> Table:
    table = Table(title=escape(title))
    for column in ("quantity", "estimate", "± s.e.", "closed form", "z"):
        table.add_column(column, justify="right" if column != "quantity" else "left")
    for name, got, se, want in rows:
        z = "exact" if se is None else f"{(got - want) / se:+.2f}"
        table.add_row(escape(name), f"{got:+.4f}", "" if se is None else f"{se:.4f}",
                      f"{want:+.4f}", z)
    return table


def _batch_means(estimates: dict, names=("mu", "sigma")) -> dict[str, tuple[float, float]]:
    """Mean and standard error over independent batch estimates (leading axis)."""
    out = {}
    for name in names:
        e = np.asarray(estimates[name], np.float64)
        out[name] = (float(e.mean()), float(e.std(ddof=1) / math.sqrt(e.shape[0])))
    return out


def off_policy_and_natural_gradient(console: Console, key, batches: int = 20) -> dict:
    """The importance-sampling, MIS and natural-gradient examples, each checked against its
    closed form with a standard error from ``batches`` independent batches."""
    params = _params()
    truth = {"mu": 2 * MU, "sigma": 2 * SIGMA}
    k_is, k_mis, k_fisher = jax.random.split(key, 3)
    out = {}

    # Off-policy: samples from q = N(1, 2²), gradient under p = N(μ, σ²).
    behaviour = dist.Normal(1.0, 2.0)
    x = behaviour.sample(k_is, (batches, 1000))

    def off_policy(xb, weighting):
        return importance.is_score_grad(dist_fn, params, xb, square(xb), behaviour,
                                        weighting=weighting)

    ordinary = _batch_means(jax.vmap(lambda xb: off_policy(xb, "ordinary"))(x))
    normalised = _batch_means(jax.vmap(lambda xb: off_policy(xb, "self_normalized"))(x))
    ess = float(importance.effective_sample_size(
        importance.log_weights(dist_fn, params, x.reshape(-1), behaviour)))
    console.print(escape(
        "Off-policy: ∇θ E_p[f] = E_q[w f ∇θ log p_θ],  w = exp(log p_θ(x) - log q(x)),  "
        f"x ~ q = N(1, 2²), {batches} × 1,000 samples, ESS = {ess:,.0f} of {x.size:,}"))
    console.print(_check_table("off-policy gradient of E[x²]", [
        ("∂μ ordinary", *ordinary["mu"], truth["mu"]),
        ("∂σ ordinary", *ordinary["sigma"], truth["sigma"]),
        ("∂μ self-normalised (biased, O(1/N))", *normalised["mu"], truth["mu"]),
        ("∂σ self-normalised (biased, O(1/N))", *normalised["sigma"], truth["sigma"]),
    ]))
    out["off_policy"] = {"ordinary": ordinary, "self_normalized": normalised, "ess": ess}

    # Multiple importance sampling over two proposals, balance heuristic.
    proposals = [dist.Normal(-1.0, 1.0), dist.Normal(2.0, 1.0)]
    k1, k2 = jax.random.split(k_mis)
    xs = (proposals[0].sample(k1, (batches, 500)), proposals[1].sample(k2, (batches, 500)))

    def mis_batch(a, b):
        return importance.mis_score_grad(dist_fn, params, [a, b], [square(a), square(b)],
                                         proposals)

    mis = _batch_means(jax.vmap(mis_batch)(*xs))
    console.print(escape(
        "MIS, balance heuristic: ∇θ E_p[f] ≈ Σ_(all samples x) p_θ(x) f(x) ∇θ log p_θ(x) / "
        f"Σ_i n_i q_i(x),  q₁ = N(-1, 1), q₂ = N(2, 1), {batches} × (500 + 500) samples"))
    console.print(_check_table("MIS gradient of E[x²]", [
        ("∂μ", *mis["mu"], truth["mu"]), ("∂σ", *mis["sigma"], truth["sigma"])]))
    out["mis"] = mis

    # Fisher information and the natural gradient.
    exact = fisher.exact_fisher(dist_fn, params)
    x = sample(dist_fn, params, k_fisher, 20_000)
    g = np.stack([np.asarray(v, np.float64) for v in per_sample_scores(dist_fn, params, x).values()],
                 axis=1)
    outer = g[:, :, None] * g[:, None, :]
    empirical, empirical_se = outer.mean(0), outer.std(0, ddof=1) / math.sqrt(g.shape[0])
    natural = fisher.natural_gradient_dense(exact, {"mu": jnp.asarray(truth["mu"]),
                                                    "sigma": jnp.asarray(truth["sigma"])}, 0.0)
    console.print(escape(
        "Natural gradient: I(μ, σ) = diag(1/σ², 2/σ²), so I⁻¹∇E[x²] = (σ²·2μ, (σ²/2)·2σ) "
        "= (2μσ², σ³)"))
    console.print(_check_table("Fisher information and natural gradient", [
        ("I_μμ exact (KL Hessian)", float(exact[0, 0]), None, 1 / SIGMA**2),
        ("I_σσ exact (KL Hessian)", float(exact[1, 1]), None, 2 / SIGMA**2),
        ("I_μμ empirical, 20,000 samples", empirical[0, 0], empirical_se[0, 0], 1 / SIGMA**2),
        ("I_σσ empirical, 20,000 samples", empirical[1, 1], empirical_se[1, 1], 2 / SIGMA**2),
        ("natural ∂μ", float(natural["mu"]), None, 2 * MU * SIGMA**2),
        ("natural ∂σ", float(natural["sigma"]), None, SIGMA**3),
    ]))
    out["natural_gradient"] = {k: float(v) for k, v in natural.items()}
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
    console.print(f"[bold]saved[/bold] {plot_path}\n")
    console.rule("[bold]importance sampling, MIS and the natural gradient")
    extras = off_policy_and_natural_gradient(console, jax.random.fold_in(key, 99))
    return {"score_error": score_error, "expected_score": mean_score, "tables": results,
            "curves": curves, "plot": str(plot_path), **extras}


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
