r"""Which estimator for which site? Per-site gradient contributions and their variances.

The contribution of site s to an estimate ĝ is the part of the gradient that flows through
s: ĝ - ĝ_{cut s}, where "cut" detaches s (a score site's log-probability, a pathwise site's
value, an enumerated site's probabilities) and leaves the rest of the surrogate as it is.
Its variance over independent estimates says how much noise s adds; ``compare`` puts
several estimator choices side by side on your own program, with the bias and variance of
the whole estimate (against a reference) and each site's share.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from scorefn import validation
from scorefn.diagnostics import ComparisonTable, repeated_estimates, summarize, timed
from scorefn.programs.plan import ESTIMATORS
from scorefn.programs.surrogate import Configuration, configure

_OPTIONS = ("num_particles", "estimators", "baselines", "credit_assignment", "max_enumeration",
            "runtime_checks", "temperature", "sum_and_sample_size", "relax_params",
            "relax_networks", "control_variates", "devices")


def _planned(program, params, args, options) -> Configuration:
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; a choice takes {list(_OPTIONS)}")
    return configure(program, params, args, **options)


def site_contributions(program: Callable, params: Any, key: jax.Array, *args: Any,
                       **options: Any) -> dict[str, Any]:
    """Each latent site's contribution to one gradient estimate: ``{site: pytree like params}``.

    ``options`` are those of ``scorefn.programs.grad`` (``num_particles``, ``estimators``,
    ``baselines``, ``credit_assignment``, ``max_enumeration``, ``relax_params``,
    ``control_variates``, ...). The contributions of
    different sites need not add up to the estimate: a term that two sites reach is
    differentiated through both.
    """
    validation.check_key(key)
    return _contributions(program, params, key, args, _planned(program, params, args, options))


def _contributions(program, params, key, args, chosen: Configuration):
    def gradient(cut):
        return jax.grad(lambda q: chosen.parts(program, q, key, args, cut)[0])(params)

    full = gradient(frozenset())
    out = {}
    for s in chosen.plan.estimators:
        cut = gradient(frozenset({s}))
        out[s] = jax.tree.map(lambda a, b: a - b, full, cut)
    return out


@dataclasses.dataclass
class SiteVariances:
    """Per-site variance of the gradient contribution over ``num_repeats`` estimates."""

    estimators: dict[str, str]
    variance: dict[str, Any]  # site -> pytree like params (per coordinate)
    num_repeats: int

    @property
    def total(self) -> dict[str, float]:
        """Σ over parameter coordinates of each site's contribution variance."""
        return {s: float(sum(np.sum(x) for x in jax.tree.leaves(t))) for s, t in self.variance.items()}


def site_variances(program: Callable, params: Any, key: jax.Array, *args: Any,
                   num_repeats: int = 200, **options: Any) -> SiteVariances:
    """The variance of each site's contribution (see ``site_contributions``) over
    ``num_repeats`` independent estimates, per parameter coordinate and in total."""
    validation.check_key(key)
    if num_repeats < 2:
        raise ValueError(f"num_repeats must be at least 2 to measure a variance, got {num_repeats}")
    chosen = _planned(program, params, args, options)
    stacked = repeated_estimates(lambda kk: _contributions(program, params, kk, args, chosen),
                                 key, num_repeats)()
    variance = jax.tree.map(lambda x: np.asarray(jnp.var(x, axis=0, ddof=1)), stacked)
    return SiteVariances(dict(chosen.plan.estimators), variance, num_repeats)


@dataclasses.dataclass
class ProgramComparison:
    """``compare``'s result: the whole-estimate table and each choice's site variances."""

    table: ComparisonTable
    sites: dict[str, SiteVariances]

    def __getitem__(self, name: str):
        return self.table[name]

    def rich_tables(self):
        from rich.markup import escape
        from rich.table import Table

        site_names = sorted({s for sv in self.sites.values() for s in sv.estimators})
        per_site = Table(title="variance of each site's gradient contribution (estimator)")
        per_site.add_column("choice", no_wrap=True)
        for s in site_names:
            per_site.add_column(escape(s), justify="right", no_wrap=True)
        for name, sv in self.sites.items():
            totals = sv.total
            per_site.add_row(escape(name), *[
                f"{totals[s]:.4g} ({sv.estimators[s]})" if s in totals else "-" for s in site_names
            ])
        return [self.table.rich_table(), per_site]

    def print(self, console=None) -> None:
        from rich.console import Console

        console = console or Console(width=120)
        for table in self.rich_tables():
            console.print(table)


def compare(
    program: Callable,
    params: Any,
    key: jax.Array,
    *args: Any,
    choices: Mapping[str, Mapping[str, Any]],
    num_repeats: int = 200,
    reference: Any = None,
    print_table: bool = True,
    console=None,
) -> ProgramComparison:
    """Compare estimator choices on your own program: bias, variance, SNR and cost of the
    whole gradient estimate, and the variance each site contributes.

    ``choices`` maps a name to options of ``scorefn.programs.grad``, e.g.
    ``{"score": {"estimators": {"z": "score"}}, "enumerate": {"estimators": {"z":
    "enumerate"}}}``. ``reference`` is the true gradient if you know it; otherwise the mean of
    4 × ``num_repeats`` estimates of the first choice, whose standard error enters the
    z-scores.
    """
    validation.check_key(key)
    validation.check_int(num_repeats, "num_repeats", 2)  # a variance needs two estimates
    if not choices:
        raise ValueError("choices is empty: give at least one {name: options}")
    planned = {name: _planned(program, params, args, options) for name, options in choices.items()}
    ref_key, key = jax.random.split(key)
    reference_se = None
    if reference is None:
        first = next(iter(planned.values()))
        stacked = repeated_estimates(
            lambda kk: jax.grad(lambda q: first.parts(program, q, kk, args)[0])(params),
            ref_key, 4 * num_repeats)()
        reference = jax.tree.map(lambda e: jnp.mean(e, 0), stacked)
        reference_se = jax.tree.map(lambda e: jnp.std(e, 0, ddof=1) / math.sqrt(e.shape[0]), stacked)
    reports, sites = [], {}
    for index, (name, chosen) in enumerate(planned.items()):
        kk = jax.random.fold_in(key, index)

        def estimator(kr, chosen=chosen):
            return jax.grad(lambda q: chosen.parts(program, q, kr, args)[0])(params)

        estimates, seconds = timed(repeated_estimates(estimator, kk, num_repeats))
        p = chosen.plan
        unbiased = (all(b is None or b.unbiased for b in p.baselines.values())
                    and all(ESTIMATORS[e].unbiased for e in p.estimators.values())
                    and all(cv.unbiased for cv in chosen.control_variates.values()))
        reports.append(summarize(name, estimates, reference, num_samples=chosen.num_particles,
                                 seconds_per_estimate=seconds / num_repeats,
                                 reference_se=reference_se, unbiased=unbiased))
        stacked = repeated_estimates(
            lambda kr, chosen=chosen: _contributions(program, params, kr, args, chosen),
            kk, num_repeats)()
        sites[name] = SiteVariances(dict(p.estimators), jax.tree.map(
            lambda x: np.asarray(jnp.var(x, axis=0, ddof=1)), stacked), num_repeats)
    flat = ravel_pytree(params)[0]
    table = ComparisonTable(reports, title=f"program gradient estimators, {flat.size} parameters, "
                                           f"{num_repeats} repeats")
    result = ProgramComparison(table, sites)
    if print_table:
        result.print(console)
    return result
