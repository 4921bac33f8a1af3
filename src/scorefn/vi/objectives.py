r"""ELBO and importance-weighted bounds, and their gradient estimators, on the loss objects.

$$
L(\theta) = \mathbb{E}_{z \sim q_\theta}[\log p(x, z) - \log q_\theta(z)], \qquad L_K(\theta) =
  \mathbb{E}\Big[\log \frac{1}{K}\sum_k w_k\Big], \quad w_k = p(x, z_k) / q_\theta(z_k)
$$

Each estimator is one of the NumPyro SVI losses of ``scorefn.vi.numpyro_loss`` (``ELBO``,
``IWAE``, ``VIMCO``), applied to the model and guide as NumPyro programs
(``scorefn.vi.guide_programs``): one implementation for ``fit``, ``elbo_grad`` and a user's
own ``SVI`` loop. For a guide site z_j (of block j):

``"score"``     ∇_j L = E[(log p - log q - b) ∇_j log q_j(z_j)]: ``ELBO(credit_assignment=False)``,
                every site by the score function
``"score_rb"``  ∇_j L = E[Σ_i (L_ji - b_ji) ∇_j log q_j(z_ji)]: ``ELBO``'s credit assignment,
                L_ji = the terms of log p(x, z) - log q(z) that read z_j, each plate element i
                weighted by the terms of its own plate index (terms that do not read z_ji have
                zero-mean products with its score)
``"pathwise"``  ∇_j L = E[∇_z (log p(x,z) - log q_θ'(z))|_{θ'=θ} ∂z/∂θ_j]: ``ELBO(path_derivative=True)``
                with every site pathwise (the path derivative, "sticking the landing", Roeder et
                al. 2017: the dropped term -∇θ log q_θ(z) has mean zero, and its variance vanishes
                as q → p(z|x))
``"mixed"``     ``"pathwise"`` for the blocks with ``rsample``, ``"score_rb"`` for the others
``"iwae"``      ``IWAE``: ∇_j L_K by the doubly reparameterised estimator (DReG, Tucker et al. 2019),
                Σ_k w̃_k² ∇_z log w_k ∂z_k/∂θ_j, for blocks with ``rsample``; score function
                Σ_k (L̂ - w̃_k) ∇ log q_j(z_k) for the others
``"vimco"``     ``VIMCO``: Σ_k (L̂ - L̂_{-k} - w̃_k) ∇_j log q_j(z_jk), L̂_{-k} with log w_k replaced by
                the mean of the other log w (Mnih & Rezende 2016): a leave-one-out learning signal

All are unbiased for ∇L (∇L_K for the last two) with any baseline from
``scorefn.baselines`` that is independent of the sample it is applied to (``score`` also
takes control variates, and ``optimal()``, which is the control variate h ≡ 1).
w̃_k = w_k / Σ_m w_m. The score-function sites' log q terms are differentiated through z
only (their direct ∇θ log q has mean zero), as the path derivative does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from scorefn import control_variates as cvs
from scorefn import validation
from scorefn.baselines import EmaState, Optimal
from scorefn.vi.guide_programs import (
    guide_program,
    model_arguments,
    model_program,
    param_map,
    unconstrained_control_variate,
)
from scorefn.vi.guides import Guide
from scorefn.vi.model import Model
from scorefn.vi.numpyro_loss import ELBO, IWAE, VIMCO

OBJECTIVES = ("score", "score_rb", "pathwise", "mixed", "iwae", "vimco")


class ElboGradient(NamedTuple):
    """``grad``: like the guide params; ``objective``: this step's estimate of the ELBO (or
    of L_K for ``iwae``/``vimco``); ``signals``: each score-function site's learning signal
    before its baseline, (K, 1, *plates) (for EMA updates)."""

    grad: Any
    objective: jax.Array
    signals: dict[str, jax.Array]


def estimator_name(estimator: str) -> str:
    """``estimator`` checked against ``OBJECTIVES``."""
    if estimator not in OBJECTIVES:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(OBJECTIVES)}")
    return estimator


def _site_baseline(baseline: Any, block: str, site: str) -> Any:
    if isinstance(baseline, dict):
        return baseline.get(site, baseline.get(block))
    return baseline


def _objective(model: Model, guide: Guide, params: dict[str, Any], key: jax.Array,
               estimator: str, num_samples: int, baseline: Any = None,
               control_variate: Any = None, runtime_checks: bool = True) -> Callable:
    """``params -> (surrogate value, signals)`` of the loss object of ``estimator``."""
    model_fn, guide_fn = model_program(model), guide_program(model, guide)
    args, kwargs = model_arguments(model)
    if estimator in ("iwae", "vimco"):
        loss = (IWAE if estimator == "iwae" else VIMCO)(num_samples, runtime_checks=runtime_checks)

        def bound(p):
            return loss.surrogate(key, param_map(guide, p), model_fn, guide_fn, *args,
                                  **kwargs), {}

        return bound
    dists = guide.distributions(params)
    estimators, baselines, controls = {}, {}, {}
    for name, block in guide.blocks.items():
        pathwise = dists[name].has_rsample and estimator in ("pathwise", "mixed")
        for site in block.sites:
            estimators[site] = "pathwise" if pathwise else "score"
            if pathwise:
                continue
            b = _site_baseline(baseline, name, site)
            if isinstance(b, Optimal):  # the optimal baseline is the score as a control variate
                controls[site] = unconstrained_control_variate(cvs.score(
                    "optimal" if b.mode == "leave_one_out" else "optimal_batch"))
                b = None
            elif control_variate is not None:
                controls[site] = unconstrained_control_variate(control_variate)
            baselines[site] = b
    loss = ELBO(num_samples, estimators=estimators, baselines=baselines, path_derivative=True,
                credit_assignment=estimator != "score", control_variates=controls,
                runtime_checks=runtime_checks)

    def elbo_surrogate(p):
        return loss.surrogate(key, param_map(guide, p), model_fn, guide_fn, *args, **kwargs)

    return elbo_surrogate


def elbo(model: Model, guide: Guide, params: dict[str, Any], key: jax.Array,
         num_samples: int = 1000) -> jax.Array:
    """Monte Carlo estimate (1/K) Σ_k [log p(x, z_k) - log q_θ(z_k)], z_k ~ q_θ; unbiased."""
    validation.check_key(key)
    num_samples = validation.check_int(num_samples, "num_samples")
    value, _ = _objective(model, guide, params, key, "score", num_samples)(params)
    return value


def iwae_bound(model: Model, guide: Guide, params: dict[str, Any], key: jax.Array,
               num_samples: int) -> jax.Array:
    """log (1/K) Σ_k w_k for one set of K samples: an unbiased estimate of L_K ≥ L."""
    validation.check_key(key)
    value, _ = _objective(model, guide, params, key, "vimco", num_samples)(params)
    return value


def elbo_grad(
    model: Model,
    guide: Guide,
    params: dict[str, Any],
    key: jax.Array,
    *,
    estimator: str = "mixed",
    num_samples: int = 1,
    baseline: Any = None,
    control_variate: Any = None,
    runtime_checks: bool = True,
) -> ElboGradient:
    r"""One gradient estimate of the ELBO (``iwae``/``vimco``: of L_K), for gradient *ascent*.

    Args:
      model: from ``scorefn.vi.as_model``.
      guide: from ``scorefn.vi.guides``.
      params: the guide's params (``guide.init()`` to start).
      key: a PRNG key (the same key gives the same estimate).
      estimator: one of ``OBJECTIVES`` (see the module docstring).
      num_samples: K samples per step (≥ 2 for ``leave_one_out``, ``iwae`` and ``vimco``).
      baseline: for the score-function sites: a core baseline (``leave_one_out()``,
        ``optimal()`` with ``"score"``), a number, an ``scorefn.baselines.EmaState`` (shaped
        like the site's signal without its K axis, see ``ema_states``) or a dict
        ``{site or block: baseline}``. None: no baseline.
      control_variate: a ``scorefn.control_variates`` control variate (``score`` only), on
        the value the guide block draws (the unconstrained one).
      runtime_checks: under ``jit``, a ValueError naming the term when a log density is not
        finite (a host callback in the compiled program); ``fit`` passes False and checks
        each chunk's ELBO and parameters itself.
    """
    estimator = estimator_name(estimator)
    validation.check_key(key)
    num_samples = validation.check_int(num_samples, "num_samples")
    if estimator in ("iwae", "vimco") and num_samples < 2:
        raise ValueError(f"estimator={estimator!r} is a multi-sample bound: num_samples must be "
                         f">= 2, got {num_samples}")
    if control_variate is not None and estimator != "score":
        raise ValueError("control_variate works with estimator='score' (one scalar learning "
                         f"signal per sample); got estimator={estimator!r}")
    optimal = any(isinstance(b, Optimal) for b in (
        baseline.values() if isinstance(baseline, dict) else [baseline]))
    if estimator != "score" and optimal:
        raise ValueError("baseline=optimal() is per parameter coordinate: it works with "
                         f"estimator='score' (got {estimator!r}); use leave_one_out() or ema()")
    if control_variate is not None and optimal:
        raise ValueError("baseline=optimal() is itself a control variate (the score, h = 1) "
                         "and a site takes one: pass control_variate alone, or "
                         "control_variates.score() in its place")
    if control_variate is not None and not isinstance(control_variate, cvs.ControlVariate):
        raise TypeError("control_variate must come from scorefn.control_variates (generic, "
                        f"score, delta_method); got {type(control_variate).__name__}")
    dists = guide.distributions(params)
    if estimator == "pathwise":
        bad = sorted(n for n, d in dists.items() if not d.has_rsample)
        if bad:
            raise ValueError(
                f"estimator='pathwise' needs every guide block to be reparameterisable; {bad} "
                f"({', '.join(type(dists[b]).__name__ for b in bad)}) is not. Use 'mixed' "
                "(pathwise for continuous blocks, score function for the others)")
    objective = _objective(model, guide, params, key, estimator, num_samples, baseline,
                           control_variate, runtime_checks)
    (value, signals), grad = jax.value_and_grad(objective, has_aux=True)(params)
    return ElboGradient(grad, value, signals)


def ema_states(model: Model, guide: Guide, params: dict[str, Any], estimator: str,
               num_samples: int, init: Callable[..., EmaState]) -> dict[str, EmaState]:
    """One EMA baseline state per score-function site, shaped like its learning signal
    without the K axis (one per plate element with ``score_rb``/``mixed``)."""
    shapes = jax.eval_shape(
        lambda p: elbo_grad(model, guide, p, jax.random.key(0), estimator=estimator,
                            num_samples=num_samples).signals, params)
    return {site: init(tuple(s.shape[1:]), s.dtype) for site, s in shapes.items()}
