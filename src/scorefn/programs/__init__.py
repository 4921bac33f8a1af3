r"""Stochastic programs: gradients of E[Σ terms] for programs with several sampling sites.

A program is ``program(params, *args)``: JAX code with ``numpyro.sample`` for stochastic
nodes and ``numpyro.factor(name, value)`` (or observed ``numpyro.sample``) for the terms of
the objective J(θ) = E[Σ terms], to be maximised. Two entry points:

    g = scorefn.programs.grad(program, params, key, *args, num_particles=8)
    s = scorefn.programs.surrogate(program, params, key, *args, num_particles=8)
    # the value of s estimates J; jax.grad(s) == g; higher derivatives unbiased too

Each latent site gets an estimator by name (``ESTIMATORS``): ``"score"`` (with a
baseline per site), ``"pathwise"`` or ``"enumerate"``; a site's score is weighted only by the
terms downstream of it, and inside a plate by those with its plate index.
``site_variances`` and ``compare`` measure the choices on your own program;
``rebar()`` and ``relax(networks)`` learn a ``"rebar"`` site's control variate.
"""

from scorefn.programs.diagnostics import (
    ProgramComparison,
    SiteVariances,
    compare,
    site_contributions,
    site_variances,
)
from scorefn.programs.learned_control_variates import Relax, rebar, relax
from scorefn.programs.plan import ESTIMATORS, plan
from scorefn.programs.surrogate import grad, magic_box, surrogate

__all__ = [
    "ESTIMATORS",
    "ProgramComparison",
    "Relax",
    "SiteVariances",
    "compare",
    "grad",
    "magic_box",
    "plan",
    "rebar",
    "relax",
    "site_contributions",
    "site_variances",
    "surrogate",
]
