r"""The surrogate objective of a stochastic program: any-order gradient estimates.

A program's objective is J(θ) = E[Σ_t c_t], the terms c_t being its ``numpyro.factor`` values
and observed sites' log-probabilities. With K particles (independent runs of the program), the
surrogate is the DiCE construction (Foerster et al. 2018) with per-site baselines that keep
every order unbiased (Mao et al. 2019; Farquhar et al. 2019):

    S(θ) = (1/K) Σ_k Σ_m w_km [ Σ_t Σ_i □(W_kt,i) c_kt,i
                                + Σ_{s ∈ score sites} Σ_i (1 - □(log p(x_ks,i))) □(U_ks,i) b_ks,i ]

    □(τ) = exp(τ - stop_gradient(τ))        (the "magic box": value 1, ∇□(τ) = □(τ) ∇τ)

- W_t: the sum of log p(x_s) over the score-function sites s upstream of term t (those whose
  value t reads, directly or through other sites' distributions): **credit assignment**
  (Schulman et al. 2015); U_s likewise for site s's own upstream score sites. Inside a
  ``numpyro.plate``, element i of a term is weighted only by the site elements with the same
  plate index (sites outside the plate: all their elements).
- b_s: a baseline per score site (default: leave-one-out over the K particles,
  ``scorefn.baselines.leave_one_out``) for the learning signal L_s = Σ_{t downstream of s} c_t.
  It must not depend on the particle's own x_s; it is held constant (stop-gradient).
- w_km = Π_e p_θ(v_e,m | ...): the probability of the m-th joint value of the enumerated
  sites (summed exactly); m runs over one value when there are none.
- Pathwise sites pass their reparameterised value (differentiable in θ) to the program, score
  sites a ``stop_gradient`` one; relaxed sites (Gumbel-softmax, straight-through) a relaxed,
  differentiable one (biased).
- Measure-valued and ARM/DisARM sites add a term of value 0 whose first derivative is their
  estimate, Σ stop_gradient(ĝ_φ) · (φ - stop_gradient(φ)) through the distribution's
  parameters φ, from reruns of the program with the site's value replaced and every other
  site drawing with the same keys: first order only.

The value of S is the Monte-Carlo estimate (1/K) Σ_k Σ_m w_km Σ_t c_kt of J (□ is 1 and the
baseline terms are 0); ∇S is an unbiased estimate of ∇J, and ∇ⁿS of ∇ⁿJ for every n (each
derivative of □(W) c has the expectation of the derivative of E[c]; each derivative of the
baseline term has zero mean given x_s's upstream, because E_s[∇ⁿ □(log p(x_s))] = ∇ⁿ Σ p = 0),
as long as every site is score, pathwise or enumerated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from scorefn import validation as v
from scorefn.baselines import Baseline, as_baseline, leave_one_out
from scorefn.control_variates import ControlVariate, with_control_variate
from scorefn.discrete import antithetic_weights, bernoulli_logits
from scorefn.measure_valued import as_supported, distribution_parameters, perturbations
from scorefn.programs.tracing import (
    Plate,
    Recorder,
    SiteInfo,
    analyse,
    canonical,
    enumeration_grid,
    inspect_sites,
    run,
    support_moving_params,
)

MAX_ENUMERATION = 4096


@dataclasses.dataclass(frozen=True)
class SiteEstimator:
    """A per-site gradient estimator of the program registry.

    ``role`` says how the site enters the surrogate: ``"score"`` (its log-probability in the
    magic boxes of the terms downstream, its value detached), ``"pathwise"`` (its
    reparameterised value carries the gradient) or ``"enumerate"`` (its finite support summed
    exactly, weighted by the probabilities).
    """

    name: str
    role: str
    unbiased: bool
    formula: str

    def check(self, site: SiteInfo) -> None:
        if self.role == "pathwise" and not site.has_rsample:
            raise ValueError(
                f"site {site.name!r}: estimator 'pathwise' needs a reparameterised sampler, but "
                f"its distribution {site.distribution} has none (has_rsample=False; discrete "
                "distributions never do). Use 'score' or, for a finite support, 'enumerate'"
            )
        if self.role == "measure_valued" and not site.measure_valued:
            raise ValueError(
                f"site {site.name!r}: estimator 'measure_valued' has weak-derivative "
                f"decompositions for Normal, Poisson and Bernoulli (also inside to_event and "
                f"plates); {site.distribution} has none. Use 'score' or 'pathwise'"
            )
        if self.role == "antithetic" and site.family not in ("BernoulliLogits", "BernoulliProbs"):
            raise ValueError(
                f"site {site.name!r}: estimator {self.name!r} is for Bernoulli sites (batched, "
                f"to_event or in plates); {site.distribution} is not one. Use 'score' (with "
                "'rloo', the leave-one-out baseline) or 'enumerate'"
            )
        if self.role == "control_variate" and site.family not in ("BernoulliLogits",
                                                                    "BernoulliProbs"):
            raise ValueError(
                f"site {site.name!r}: in a program {self.name!r} is for Bernoulli sites "
                f"(batched, to_event or in plates); {site.distribution} is not one: a program "
                "reads a Categorical value as an index, where a relaxed (one-hot) value cannot "
                "go. For one Categorical distribution, scorefn.grad(..., "
                f"estimator={self.name!r}) and scorefn.discrete.{self.name}()"
            )
        if self.role == "relaxed" and site.family not in ("BernoulliLogits", "BernoulliProbs"):
            raise ValueError(
                f"site {site.name!r}: in a program the {self.name!r} relaxation is for Bernoulli "
                f"sites (a relaxed Categorical would change the value's shape to one-hot; use "
                f"scorefn.grad for that); {site.distribution} is not one"
            )
        if self.name == "sum_and_sample" and (
                site.family not in ("CategoricalLogits", "CategoricalProbs") or site.shape != ()):
            raise ValueError(
                f"site {site.name!r}: in a program 'sum_and_sample' is for one Categorical value "
                f"(shape (), outside plates); {site.distribution} with shape {site.shape} is not "
                "one. Use 'enumerate' or 'rloo'")
        if self.role == "enumerate" and site.support_values is None:
            raise ValueError(
                f"site {site.name!r}: estimator 'enumerate' needs a finite support known when "
                f"tracing (Bernoulli, Categorical, integer intervals with fixed bounds); "
                f"{site.distribution} has none. Use 'score'"
            )


ESTIMATORS: dict[str, SiteEstimator] = {
    e.name: e
    for e in (
        SiteEstimator("score", "score", True,
                      "(L_s - b_s) ∇θ log p_θ(x_s), L_s the terms downstream of s"),
        SiteEstimator("pathwise", "pathwise", True, "∇θ Σ_t c_t(T(ε, θ)), x_s = T(ε, θ)"),
        SiteEstimator("enumerate", "enumerate", True,
                      "∇θ Σ_v p_θ(x_s = v) E[Σ_t c_t | x_s = v], summed exactly"),
        SiteEstimator("sum_and_sample", "enumerate", True,
                      "∇θ [Σ_{c∈C} p_θ(c) L(c) + (1 - p_θ(C)) □(log q_θ(x)) L(x)], C the k - 1 "
                      "most probable classes, x ~ q = p(· | x ∉ C) (Liu et al. 2019)"),
        SiteEstimator("measure_valued", "measure_valued", True,
                      "Σ_ij c_ij (L_s(x with x_j ~ p⁺_ij) - L_s(x with x_j ~ p⁻_ij)) ∇θ φ_i,j "
                      "(first order only)"),
        SiteEstimator("rloo", "score", True, "'score' with the leave-one-out baseline over the "
                      "K particles (Kool et al. 2019)"),
        SiteEstimator("arm", "antithetic", True,
                      "(L_s(b⁽¹⁾) - L_s(b⁽²⁾)) (u - ½) ∇θ φ (Yin & Zhou 2019; first order only)"),
        SiteEstimator("disarm", "antithetic", True,
                      "½ (L_s(b) - L_s(b̃)) (-1)^b̃ 1[b ≠ b̃] σ(|φ|) ∇θ φ (Dong et al. 2020; first "
                      "order only)"),
        SiteEstimator("rebar", "control_variate", True,
                      "(L_s(b) - η c(z̃)) ∇θ log p(b) + η ∇θ c(z) - η ∇θ c(z̃), c(z) = L_s(σ(z/τ)), "
                      "z logistic-perturbed logits, z̃ ~ z | b, η = 1 (Tucker et al. 2017; first "
                      "order only)"),
        SiteEstimator("relax", "control_variate", True,
                      "'rebar' with a flax network in the control variate, c(z) = η L_s(σ(z/τ)) "
                      "+ r_ψ(σ(z/τ)), ψ from relax_params/relax_networks (Grathwohl et al. 2018; "
                      "first order only)"),
        SiteEstimator("gumbel_softmax", "relaxed", False,
                      "∇θ of the terms at x = σ((φ + logistic noise)/τ); biased"),
        SiteEstimator("straight_through", "relaxed", False,
                      "hard b forward, the relaxed sample's gradient; biased"),
    )
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one program: estimators, baselines, credit assignment."""

    sites: dict[str, SiteInfo]
    estimators: dict[str, str]  # latent site -> estimator name, in sorted site order
    baselines: dict[str, Baseline | None]  # score site -> its baseline
    # score sites upstream of each term and latent site, sorted: the order of a sum is part of
    # the compiled program, and a set's order would change with PYTHONHASHSEED
    upstream: dict[str, tuple[str, ...]]
    downstream_terms: dict[str, tuple[str, ...]]  # latent site -> the terms it reaches
    enumerated_descendants: dict[str, tuple[str, ...]]  # latent site -> enumerated sites below
    plates: tuple[Plate, ...]
    grid: dict[str, np.ndarray]  # enumerated site -> its values, one branch axis each
    credit_assignment: bool
    runtime_checks: bool
    temperature: float
    sum_and_sample_size: int = 2

    @property
    def roles(self) -> dict[str, str]:
        return {n: ESTIMATORS[e].role for n, e in self.estimators.items()}

    def _with_role(self, role: str) -> tuple[str, ...]:
        return tuple(n for n, e in self.estimators.items() if ESTIMATORS[e].role == role)

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(sorted(n for n, s in self.sites.items() if s.is_term))

    @property
    def score_names(self) -> tuple[str, ...]:
        return self._with_role("score")

    @property
    def enumerate_names(self) -> tuple[str, ...]:
        return self._with_role("enumerate")

    @property
    def measure_valued_names(self) -> tuple[str, ...]:
        return self._with_role("measure_valued")

    @property
    def antithetic_names(self) -> tuple[str, ...]:
        return self._with_role("antithetic")

    @property
    def control_variate_names(self) -> tuple[str, ...]:
        return self._with_role("control_variate")


def _closure(parents: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    ancestors: dict[str, frozenset[str]] = {}

    def visit(s, path=()):
        if s not in ancestors:
            found = set()
            for p in parents[s]:
                if p in path:
                    continue
                found |= {p} | visit(p, path + (s,))
            ancestors[s] = frozenset(found)
        return ancestors[s]

    for s in parents:
        visit(s)
    return ancestors


def plan(
    program: Callable,
    params: Any,
    args: tuple,
    *,
    num_particles: int,
    estimators: Mapping[str, str] | None = None,
    baselines: Mapping[str, Any] | None = None,
    credit_assignment: bool = True,
    validate: bool = True,
    max_enumeration: int = MAX_ENUMERATION,
    runtime_checks: bool = True,
    temperature: float = 0.5,
    sum_and_sample_size: int = 2,
) -> Plan:
    """Trace the program abstractly and decide how each site is estimated (checks included)."""
    name = getattr(program, "__name__", repr(program))
    if not callable(program):
        raise TypeError(f"program must be a function program(params, *args); got {type(program).__name__}")
    sites = inspect_sites(program, params, args)
    terms = tuple(sorted(n for n, s in sites.items() if s.is_term))
    latents = sorted(n for n, s in sites.items() if not s.is_term)
    if not terms:
        raise ValueError(
            f"the program {name!r} has no term: J(θ) = E[Σ terms] would be a constant. Add the "
            "objective with numpyro.factor(name, value) (or an observed numpyro.sample site)"
        )
    estimators = dict(estimators or {})
    for n, e in estimators.items():
        if n not in sites:
            raise ValueError(f"estimators names the site {n!r}, which the program does not have; "
                             f"its latent sites are {latents}")
        if sites[n].is_term:
            raise ValueError(f"estimators names {n!r}, an observed site or factor (a term); "
                             f"only latent sites get estimators: {latents}")
        if e not in ESTIMATORS:
            raise ValueError(f"site {n!r}: unknown estimator {e!r}; the known ones are "
                             f"{sorted(ESTIMATORS)}")
    if not (isinstance(temperature, int | float) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    structure = analyse(program, params, args, sites)
    chosen = {}
    for n in latents:
        if n in estimators:
            chosen[n] = estimators[n]
        elif sites[n].has_rsample and structure.differentiable[n]:
            chosen[n] = "pathwise"
        else:
            chosen[n] = "score"
        ESTIMATORS[chosen[n]].check(sites[n])
    roles = {n: ESTIMATORS[e].role for n, e in chosen.items()}
    score_names = tuple(n for n in latents if roles[n] == "score")
    enumerate_names = tuple(n for n in latents if roles[n] == "enumerate")

    baselines = dict(baselines or {})
    chosen_baselines: dict[str, Baseline | None] = {}
    for n in baselines:
        if n not in sites or sites[n].is_term:
            raise ValueError(f"baselines names {n!r}, which is not a latent site of the program "
                             f"(latent sites: {latents})")
        if roles[n] != "score":
            raise ValueError(f"baselines names site {n!r}, whose estimator is {chosen[n]!r}: "
                             "baselines apply to score-function sites only")
    for n in score_names:
        if chosen[n] == "rloo":
            if n in baselines:
                raise ValueError(f"site {n!r}: estimator 'rloo' is 'score' with the leave-one-out "
                                 "baseline; give it no baseline (or use 'score' with yours)")
            baselines[n] = leave_one_out()
        b = as_baseline(baselines[n]) if n in baselines else (
            leave_one_out() if num_particles >= 2 else None)
        if b is not None and b.per_coordinate:
            raise ValueError(f"site {n!r}: the {b.name} baseline is per parameter coordinate; a "
                             "program's surrogate takes baselines per site element (constant, "
                             "ema state, leave_one_out, batch_mean)")
        if b is not None and b.name in ("leave_one_out", "batch_mean") and num_particles < 2:
            raise ValueError(f"site {n!r}: the {b.name} baseline needs num_particles >= 2, got "
                             f"{num_particles}")
        chosen_baselines[n] = b

    if validate:
        leaves = v.leaf_names(params)
        unused = [leaf for leaf, used in zip(leaves, structure.params_used) if not used]
        if unused:
            raise ValueError(
                f"{', '.join(unused)} does not affect any sample site or term of the program "
                f"{name!r}: its gradient would be silently zero. Remove it from params, or check "
                "that the program uses it"
            )
        if score_names:
            moving = support_moving_params(program, params, args, sites, list(score_names))
            for n, indices in moving.items():
                if indices:
                    raise ValueError(
                        f"site {n!r}: the support of its distribution ({sites[n].distribution}) "
                        f"depends on {', '.join(leaves[i] for i in indices)}, so the "
                        "score-function estimator would be biased (differentiating under the "
                        "integral ignores the moving boundary). Use 'pathwise' (reparameterise, "
                        "e.g. x = θ·u with u ~ Uniform(0, 1))"
                    )

    ancestors = _closure(structure.parents)
    for s in latents:
        if roles[s] != "control_variate":
            continue
        for d in latents:
            if s in ancestors[d] and chosen[d] not in ("pathwise", "enumerate"):
                raise ValueError(
                    f"site {s!r}: estimator {chosen[s]!r} differentiates the terms below s through a "
                    f"relaxed value of s, so every latent site below it must be 'pathwise' or "
                    f"'enumerate' (a sampled discrete value has no derivative); site {d!r} is "
                    f"{chosen[d]!r}")
    score_set = set(score_names)
    upstream, reaches = {}, {}
    for t in terms:
        reads = set(structure.term_reads[t])
        for s in list(reads):
            reads |= ancestors[s]
        reaches[t] = reads if credit_assignment else set(latents)
        upstream[t] = tuple(sorted(reads & score_set if credit_assignment else score_set))
    for s in latents:
        upstream[s] = tuple(sorted(ancestors[s] & score_set))

    order: dict[str, Plate] = {}
    for s in sites.values():
        for p in s.plates:
            order.setdefault(p.name, p)
    summed_and_sampled = [n for n in enumerate_names if chosen[n] == "sum_and_sample"]
    for n in summed_and_sampled:
        classes = len(sites[n].support_values)
        if (isinstance(sum_and_sample_size, bool) or not isinstance(sum_and_sample_size, int)
                or not 2 <= sum_and_sample_size <= classes):
            raise ValueError(f"site {n!r}: sum_and_sample_size must be an int in [2, {classes}] "
                             f"(k - 1 classes summed, one sampled); got {sum_and_sample_size!r}")
    grid = enumeration_grid(sites, [n for n in enumerate_names if n not in summed_and_sampled],
                            max_enumeration) if enumerate_names else {}
    # A sum-and-sample site's branches are indices: the values depend on θ and the particle.
    grid.update({n: np.arange(sum_and_sample_size, dtype=np.int32) for n in summed_and_sampled})
    grid = {n: grid[n] for n in enumerate_names}  # one branch axis each, in site order
    return Plan(
        sites=sites,
        estimators=chosen,
        baselines=chosen_baselines,
        upstream=upstream,
        downstream_terms={s: tuple(t for t in terms if s in reaches[t]) for s in latents},
        enumerated_descendants={s: tuple(e for e in enumerate_names if s in ancestors[e])
                                for s in latents},
        plates=tuple(order.values()),
        grid=grid,
        credit_assignment=credit_assignment,
        runtime_checks=bool(runtime_checks),
        temperature=float(temperature),
        sum_and_sample_size=int(sum_and_sample_size),
    )


def _checks(p: Plan):
    """The plan's run-time checks, unless the caller traces with them off
    (``validation.runtime_checks(False)``: a training loop's cached step)."""
    return v.runtime_checks(p.runtime_checks and v.runtime_checks_enabled())


def magic_box(tau: jax.Array) -> jax.Array:
    r"""□(τ) = exp(τ - stop_gradient(τ)): value 1, and ∇□(τ) = □(τ) ∇τ at every order."""
    return jnp.exp(tau - jax.lax.stop_gradient(tau))


def _nonfinite_term_message(name: str):
    def message(values: np.ndarray) -> str | None:
        per_particle = values.reshape(values.shape[0], -1)
        bad = ~np.isfinite(per_particle).all(axis=1)
        if not bad.any():
            return None
        first = int(np.flatnonzero(bad)[0])
        kind = "NaN" if np.isnan(per_particle[first]).any() else "inf"
        return (f"term {name!r} of the program is {kind} at particle {first} ({int(bad.sum())} "
                f"of {len(bad)} particles): J = E[Σ terms] needs finite terms. Check the factor's "
                "value (or the observed site's log-probability) for the sampled values")

    return message


def _measure_valued_term(program, params, args, p: Plan, rec: Recorder, site_keys, forced,
                         index: int, site: str) -> jax.Array:
    """Σ_ij stop_gradient(c_ij (L⁺_ij - L⁻_ij)) · (φ_ij - stop_gradient(φ_ij)): value 0, its
    gradient the weak-derivative estimate for site s, by the chain rule through its
    distribution parameters φ (Pflug 1989; Mohamed et al. 2020, section 6). L± are the
    terms s reaches, from runs of the program with element j of x_s replaced by a draw from
    p±_ij and every other site drawing with the same keys (common random numbers, so the
    terms element j does not reach cancel exactly)."""
    if not p.downstream_terms[site]:
        return jnp.zeros(())
    x = jax.lax.stop_gradient(rec.latents[site]["value"])
    d = as_supported(rec.latents[site]["fn"], tuple(jnp.shape(x)))
    flat = x.reshape(1, -1).astype(jnp.result_type(float))
    key = jax.random.fold_in(site_keys[-1], index + 1)
    quiet = jax.lax.stop_gradient(params)

    def reached(value):
        return _reached(program, quiet, args, p, site_keys, forced, site,
                        value.reshape(x.shape).astype(x.dtype))

    def difference(plus, minus, j):
        return reached(flat[0].at[j].set(plus)) - reached(flat[0].at[j].set(minus))

    phis = distribution_parameters(d)
    out = jnp.zeros(())
    for phi, (c, plus, minus) in zip(phis, perturbations(d, key, flat)):
        diffs = jax.vmap(difference)(plus[0], minus[0], jnp.arange(flat.shape[1]))
        with _checks(p):
            guard = v.finite_guard((diffs, _nonfinite_reached_message(site)))
        estimate = jax.lax.stop_gradient(c * diffs)
        phi = phi.reshape(-1)
        out = out + v.guarded(jnp.sum(estimate * (phi - jax.lax.stop_gradient(phi))), guard)
    return out


def _over_branches(fn: Callable, names: tuple[str, ...], grid: dict[str, np.ndarray]) -> Any:
    """``fn(forced)`` for every joint value of the enumerated sites ``names``: one vmapped
    axis per site, in that order."""

    def branches(i, forced):
        if i == len(names):
            return fn(forced)
        return jax.vmap(lambda x: branches(i + 1, {**forced, names[i]: x}))(jnp.asarray(grid[names[i]]))

    return branches(0, {})


def _reached_terms(rec: Recorder, p: Plan, site: str, by_plate: bool) -> jax.Array:
    """Σ of the terms s reaches: a scalar, or (``by_plate``, with credit assignment) one sum
    per element of s's plates, laid out to broadcast against s's value."""
    if not by_plate or not p.credit_assignment or not p.sites[site].plates:
        return sum(jnp.sum(rec.terms[t]["value"]) for t in p.downstream_terms[site])
    order = p.plates
    plates = p.sites[site].plates
    keep = {pl.name for pl in plates}
    axes = tuple(i for i, pl in enumerate(order) if pl.name not in keep)
    total = sum(jnp.sum(canonical(rec.terms[t]["value"], p.sites[t].plates, order), axis=axes,
                        keepdims=True) for t in p.downstream_terms[site])
    kept = [pl for pl in order if pl.name in keep]
    total = jnp.broadcast_to(total, [pl.size if pl.name in keep else 1 for pl in order])
    total = total.reshape([pl.size for pl in kept])
    site_info = rec.latents[site]
    batch_ndim = len(site_info["fn"].batch_shape)
    ndim = jnp.ndim(site_info["value"])
    axis_of = {pl.name: batch_ndim + pl.dim for pl in plates}
    total = jnp.transpose(total, sorted(range(len(kept)), key=lambda i: axis_of[kept[i].name]))
    shape = [1] * ndim
    for pl in kept:
        shape[axis_of[pl.name]] = pl.size
    return total.reshape(shape)


def _reached(program, params, args, p: Plan, site_keys, forced, site: str, value,
             by_plate: bool = False, differentiable: bool = False) -> jax.Array:
    """E[Σ terms reached from s | x_s = value]: one rerun with s forced (every other site
    drawing with the same keys), summed exactly over the enumerated sites below s; per
    element of s's plates if ``by_plate``; detached unless ``differentiable`` (then its
    gradient flows through ``value``, and through ``params`` if they are not detached)."""
    maybe_stop = (lambda x: x) if differentiable else jax.lax.stop_gradient
    below = p.enumerated_descendants.get(site, ())

    def once(values):
        rec = run(program, params, site_keys[-1], args,
                  Recorder(p.roles, {**forced, **values, site: value}, frozenset(),
                           site_keys[:len(p.estimators)], p.estimators, p.temperature,
                           p.sum_and_sample_size))
        total = _reached_terms(rec, p, site, by_plate)
        log_w = sum((jnp.sum(rec.latent_log_prob(e)) for e in below), jnp.zeros(()))
        return total, log_w

    if not below:
        return maybe_stop(once({})[0])
    totals, log_w = _over_branches(once, below, p.grid)
    weights = jnp.exp(log_w).reshape(log_w.shape + (1,) * (totals.ndim - log_w.ndim))
    return maybe_stop(jnp.sum(weights * totals, axis=tuple(range(log_w.ndim))))


def _antithetic_term(program, params, args, p: Plan, rec: Recorder, site_keys, forced,
                     site: str) -> jax.Array:
    """Σ_i stop_gradient((L_s(first) - L_s(second)) w_i) · (φ_i - stop_gradient(φ_i)) for an
    ARM or DisARM site: value 0, its gradient the antithetic estimate, through the logits φ
    (see ``scorefn.discrete``). The particle's run used the pair's first sample; the
    second comes from a rerun with every other site drawing with the same keys."""
    if not p.downstream_terms[site]:
        return jnp.zeros(())
    u, logits, first, second = rec.antithetic[site]
    # The particle's own run is one branch of the enumerated sites below s, weighted by its
    # probability given the first sample outside; the second sample's signal is summed over
    # those branches here.
    # Inside a plate, element i's pair is weighted by the terms with its plate index only
    # (the others' difference has mean zero given b_i, b̃_i): credit assignment.
    mine = jax.lax.stop_gradient(_reached_terms(rec, p, site, by_plate=True))
    other = _reached(program, jax.lax.stop_gradient(params), args, p, site_keys, forced, site,
                     second, by_plate=True)
    diff = mine - other
    with _checks(p):
        guard = v.finite_guard((diff, _nonfinite_reached_message(site)))
    weights = antithetic_weights(logits, u, first, second, p.estimators[site])
    phi = bernoulli_logits(rec.latents[site]["fn"], tuple(jnp.shape(u)), p.estimators[site])
    estimate = jax.lax.stop_gradient(diff * weights)
    return v.guarded(jnp.sum(estimate * (phi - jax.lax.stop_gradient(phi))), guard)


def conditional_uniform(b: jax.Array, prob: jax.Array, w: jax.Array) -> jax.Array:
    """u' ~ Uniform(0, 1) given 1[u' > 1 - p] = b, from w ~ Uniform(0, 1): the uniform whose
    logistic perturbation z̃ = φ + log u' - log(1 - u') is z | b (differentiable in p)."""
    return jnp.clip(b * (1 - prob + w * prob) + (1 - b) * w * (1 - prob), 1e-6, 1 - 1e-6)


def _rebar_term(program, params, args, p: Plan, rec: Recorder, site_keys, forced,
                site: str, psi: Mapping[str, Any] | None = None,
                network: Any = None) -> jax.Array:
    r"""Value 0, its gradient REBAR's (with ``network``, RELAX's) estimate for a Bernoulli
    site's sampling path (η = 1, τ = the plan's temperature, or ψ = (η, log τ[, the network's
    params]) from ``psi``; see ``scorefn.discrete.Relax``):

    $$
    \left(L_s(b) - c(\tilde z)\right) \nabla_\theta \log p(b) + \nabla_\theta c(z) - \nabla_\theta c(\tilde
      z), \qquad c(z) = \eta L_s(\sigma(z/\tau)) + r_\psi(\sigma(z/\tau)),
    $$

    z = φ + log u - log(1 - u) (so b = 1[z > 0] is the particle's value), z̃ ~ z | b
    reparameterised with a second uniform. c reruns the program with s set to the relaxed
    value and θ detached, so c's gradient reaches θ only through φ, by z. Inside a plate,
    element i's score is weighted by its own terms (credit assignment), and the network r_ψ
    sees element i's relaxed value only (so each element's control depends on its own z_i,
    which keeps the per-element estimate unbiased). With ``psi`` the estimate is
    differentiable in ψ (its learning signal reruns c at z̃ with θ detached, a fourth run),
    so ψ can take a step down the estimator's variance."""
    if not p.downstream_terms[site]:
        return jnp.zeros(())
    u, w = rec.control_variate[site]
    d = rec.latents[site]["fn"]
    phi = bernoulli_logits(d, tuple(jnp.shape(u)), "rebar")
    b = jax.lax.stop_gradient(jnp.asarray(rec.latents[site]["value"], phi.dtype))
    prob = jax.nn.sigmoid(phi)
    z, z_given_b = (phi + jnp.log(x) - jnp.log1p(-x) for x in (u, conditional_uniform(b, prob, w)))
    frozen = jax.lax.stop_gradient(params)
    temperature = p.temperature if psi is None else jnp.exp(psi["log_temperature"])

    def control(zz):
        value = jax.nn.sigmoid(zz / temperature).astype(phi.dtype)
        reached = _reached(program, frozen, args, p, site_keys, forced, site, value,
                           by_plate=True, differentiable=True)
        if psi is None:
            return reached
        out = psi["eta"] * reached
        if network is not None:
            out = out + _per_element_network(network, psi["net"], value, p, rec, site,
                                             jnp.shape(reached))
        return out

    c_z, c_given_b = control(z), control(z_given_b)
    reached_terms = _reached_terms(rec, p, site, by_plate=True)
    if psi is None:
        signal = jax.lax.stop_gradient(reached_terms - c_given_b)
    else:  # constant in θ, differentiable in ψ
        signal = jax.lax.stop_gradient(reached_terms) - control(jax.lax.stop_gradient(z_given_b))
    with _checks(p):
        guard = v.finite_guard((jax.lax.stop_gradient(jnp.stack([jnp.sum(signal), jnp.sum(c_z)])),
                                _nonfinite_reached_message(site)))
    log_p = b * jax.nn.log_sigmoid(phi) + (1 - b) * jax.nn.log_sigmoid(-phi)

    def zero_valued(x):
        return x - jax.lax.stop_gradient(x)

    estimate = (jnp.sum(signal * zero_valued(log_p)) + zero_valued(jnp.sum(c_z))
                - zero_valued(jnp.sum(c_given_b)))
    return v.guarded(estimate, guard)


def _per_element_network(network: Any, net_params: Any, value: jax.Array, p: Plan,
                         rec: Recorder, site: str, shape: tuple[int, ...]) -> jax.Array:
    """r_ψ applied to each element of the site's plates (its relaxed value with the plate
    axes indexed), laid out like the by-plate learning signal ``shape``; a scalar when the
    site is in no plate (or credit assignment is off)."""
    def apply(x):
        return jnp.reshape(network.apply(net_params, x), ())

    plates = p.sites[site].plates if p.credit_assignment else ()
    if not plates:
        return jnp.reshape(apply(value), shape)
    batch_ndim = len(rec.latents[site]["fn"].batch_shape)
    axes = sorted(batch_ndim + pl.dim for pl in plates)
    moved = jnp.moveaxis(value, axes, tuple(range(len(axes))))
    lead = moved.shape[:len(axes)]
    flat = moved.reshape((math.prod(lead),) + moved.shape[len(axes):])
    return jax.vmap(apply)(flat).reshape(shape)


def _nonfinite_reached_message(site: str):
    def message(values: np.ndarray) -> str | None:
        if np.isfinite(values).all():
            return None
        return (f"site {site!r}: the terms it reaches are not finite when its value is replaced "
                "(a measure-valued part or the antithetic sample); check that the program is "
                "defined on the whole support of the site")

    return message


def _particles(program, params, key, args, p: Plan, num_particles: int, cut: frozenset,
               relax: tuple[Mapping[str, Any], Mapping[str, Any]],
               kept: tuple[str, ...] = ()):
    """Every particle's terms and score sites' log-probabilities, canonical, shaped
    (K, *branches, *plates): one branch axis per enumerated site (one of size 1 if none);
    each enumerated site's log-probability, (K, *branches); and the values of the sites
    ``kept`` (detached), (K, *branches, *value_shape)."""
    order = p.plates

    num_latents = len(p.estimators)

    def one(site_keys, forced):
        rec = run(program, params, site_keys[-1], args,
                  Recorder(p.roles, forced, cut, site_keys[:num_latents], p.estimators,
                           p.temperature, p.sum_and_sample_size))
        terms = {t: canonical(rec.terms[t]["value"], p.sites[t].plates, order) for t in p.term_names}
        scores = {s: canonical(rec.latent_log_prob(s), p.sites[s].plates, order)
                  for s in p.score_names}
        enum = {e: jnp.sum(rec.latent_log_prob(e)) for e in p.enumerate_names}
        weak = sum((_measure_valued_term(program, params, args, p, rec, site_keys, forced, i, s)
                    for i, s in enumerate(p.measure_valued_names) if s not in cut), jnp.zeros(()))
        weak = weak + sum((_antithetic_term(program, params, args, p, rec, site_keys, forced, s)
                           for s in p.antithetic_names if s not in cut), jnp.zeros(()))
        relax_params, relax_networks = relax
        weak = weak + sum((_rebar_term(program, params, args, p, rec, site_keys, forced, s,
                                       relax_params.get(s), relax_networks.get(s))
                           for s in p.control_variate_names if s not in cut), jnp.zeros(()))
        values = {s: jax.lax.stop_gradient(rec.latents[s]["value"]) for s in kept}
        return terms, scores, enum, weak, values

    def particle(k):
        if not p.grid:
            return jax.tree.map(lambda x: x[None], one(k, {}))
        return _over_branches(lambda forced: one(k, forced), p.enumerate_names, p.grid)

    with numpyro.validation_enabled(False):
        return jax.vmap(particle)(_particle_keys(key, p, num_particles))


def _particle_keys(key: jax.Array, p: Plan, num_particles: int) -> jax.Array:
    """Each particle's site keys, (K, num_latents + 1). All particles' keys in one split (a
    split per particle inside the vmap costs ~10% more on CPU for a small program)."""
    return jax.random.split(key, (num_particles, len(p.estimators) + 1))


def _control_variate_term(program, params, key, args, p: Plan, num_particles: int, site: str,
                          cv: ControlVariate, values: jax.Array, signal: jax.Array) -> jax.Array:
    r"""Value 0, its gradient -(1/K) Σ_k β_k ⊙ c_k: the control variate h of a score site
    (``scorefn.control_variates``), with

    $$
    c_k = h(x_k)\, \nabla_\theta \log p_\theta(x_k \mid \text{upstream}_k) - \nabla_\theta
      \mathbb{E}_{p_\theta(\cdot \mid \text{upstream}_k)}[h],
    $$

    which has mean zero given the particle's upstream, and β per coordinate of θ fitted to
    the plain terms f_k ∇θ log p_θ(x_k) (``with_control_variate``: leave-one-out for
    ``"optimal"``, so β_k does not depend on x_k). The site's distribution as a function of
    θ comes from rerunning the particle with x_s forced to its value and every other site
    drawing with the same keys. First order only."""
    n = len(p.estimators)
    # One signal per particle (checked), broadcast over the site's plates: read it once.
    f = jax.lax.stop_gradient(signal.reshape(num_particles, -1)[:, 0])

    def parts(site_keys, x):
        def rerun(theta):  # the particle again, x_s forced, every other key the same
            return run(program, theta, site_keys[-1], args,
                       Recorder(p.roles, {site: x}, frozenset(), site_keys[:n], p.estimators,
                                p.temperature, p.sum_and_sample_size))

        def log_p_and_mean(theta):
            # One rerun gives both: log p_θ(x) and E_θ[h], differentiated together.
            rec = rerun(theta)
            d = rec.latents[site]["fn"]
            h, mean_fn = cv.prepare(lambda same: same, d)
            log_p = jnp.sum(rec.latent_log_prob(site))
            return jnp.stack([log_p, jnp.sum(mean_fn(d)).astype(log_p.dtype)]), h(x)

        jacobian, h_x = jax.jacrev(log_p_and_mean, has_aux=True)(params)
        return (jax.tree.map(lambda j: j[0], jacobian), jax.tree.map(lambda j: j[1], jacobian),
                h_x)

    with numpyro.validation_enabled(False):
        scores, mean_grads, h = jax.vmap(parts)(_particle_keys(key, p, num_particles),
                                                values.reshape((num_particles,) + values.shape[2:]))
    h = jax.lax.stop_gradient(h.astype(f.dtype))

    def per_particle(x, leaf):
        return x.reshape((num_particles,) + (1,) * (leaf.ndim - 1))

    controls = jax.tree.map(lambda g, dm: per_particle(h, g) * g - dm, scores, mean_grads)
    raw = jax.tree.map(lambda g: per_particle(f, g) * g, scores)
    correction = with_control_variate(jax.tree.map(jnp.zeros_like, raw), controls,
                                      cv.coefficient, fit=raw)
    return sum(jnp.sum(jax.lax.stop_gradient(jnp.mean(c, 0)) * (q - jax.lax.stop_gradient(q)))
               for c, q in zip(jax.tree.leaves(correction), jax.tree.leaves(params)))


def surrogate_parts(program, params, key, args, p: Plan, num_particles: int,
                    cut: frozenset = frozenset(),
                    relax: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
                    control_variates: Mapping[str, ControlVariate] | None = None):
    """The surrogate's value and each score site's learning signal (K, *branches, *plates)."""
    control_variates = dict(control_variates or {})
    terms, scores, enum, weak, values = _particles(program, params, key, args, p,
                                                   num_particles, cut, relax,
                                                   tuple(control_variates))
    order = p.plates
    first_plate = 1 + max(len(p.enumerate_names), 1)
    plate_axes = tuple(range(first_plate, first_plate + len(order)))

    def sum_plates(x, keep):
        axes = tuple(a for a, pl in zip(plate_axes, order) if pl.name not in keep)
        return jnp.sum(x, axis=axes, keepdims=True) if axes else x

    plates_of = {n: {pl.name for pl in s.plates} for n, s in p.sites.items()}
    if not p.credit_assignment:
        plates_of = {n: set() for n in p.sites}
    scores = {s: jax.lax.stop_gradient(r) if s in cut else r for s, r in scores.items()}
    enum = {e: jax.lax.stop_gradient(x) if e in cut else x for e, x in enum.items()}
    with _checks(p):
        guard = v.finite_guard(*[(jax.lax.stop_gradient(terms[t]), _nonfinite_term_message(t))
                                 for t in p.term_names])
    branch_shape = terms[p.term_names[0]].shape[:first_plate]
    enum_log_prob = sum(enum.values(), jnp.zeros(branch_shape))

    total = weak
    for t in p.term_names:
        w = sum((sum_plates(scores[s], plates_of[t]) for s in p.upstream[t]), 0.0)
        # Σ_n □(w) c_n = □(w) Σ_n c_n along the plates w is constant on: the sum first, so
        # that neither the product nor its gradient runs over every plate element.
        flat = tuple(a for a in plate_axes if jnp.ndim(w) <= a or jnp.shape(w)[a] == 1)
        term = jnp.sum(terms[t], axis=flat, keepdims=True) if flat else terms[t]
        total = total + jnp.sum(magic_box(w) * term, axis=plate_axes)
    signals = {}
    for s in p.score_names:
        keep = plates_of[s]
        shape = scores[s].shape
        signal = jnp.zeros(shape, scores[s].dtype)
        for t in p.downstream_terms[s]:
            signal = signal + jnp.broadcast_to(sum_plates(terms[t], keep), shape)
        signal = jax.lax.stop_gradient(signal)
        below = p.enumerated_descendants[s]
        if below:
            # Enumerated sites below s weight its branches by probabilities that depend on
            # x_s: the baseline must not vary across those branches, so it is fitted to the
            # signal summed over them (E[L_s | x_s, upstream branches]).
            log_w = sum(enum[e] for e in below)
            w = jax.lax.stop_gradient(jnp.exp(log_w)).reshape(branch_shape + (1,) * len(order))
            axes = tuple(1 + p.enumerate_names.index(e) for e in below)
            signal = jnp.sum(w * signal, axis=axes, keepdims=True)
        signals[s] = signal
        b = p.baselines[s]
        if b is None:
            continue
        baseline = jax.lax.stop_gradient(b(signal))
        up = sum((sum_plates(scores[u], keep) for u in p.upstream[s]), 0.0)
        term = (1.0 - magic_box(scores[s])) * magic_box(up) * baseline
        total = total + jnp.sum(term, axis=plate_axes)
    weights = jnp.exp(enum_log_prob)
    value = jnp.mean(jnp.sum(weights * total, axis=tuple(range(1, first_plate))))
    for s, cv in control_variates.items():
        if s in cut:  # a cut site's estimate is left out whole, its control variate too
            continue
        value = value + _control_variate_term(program, params, key, args, p, num_particles, s,
                                              cv, values[s], signals[s])
    return v.guarded(value, guard), signals


def _check_call(params, key, num_particles):
    v.check_key(key)
    if (isinstance(num_particles, bool) or not isinstance(num_particles, int | np.integer)
            or num_particles < 1):
        raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
    v.check_float_params(params)


def surrogate(
    program: Callable,
    params: Any,
    key: jax.Array,
    *args: Any,
    num_particles: int = 8,
    estimators: Mapping[str, str] | None = None,
    baselines: Mapping[str, Any] | None = None,
    credit_assignment: bool = True,
    validate: bool = True,
    max_enumeration: int = MAX_ENUMERATION,
    runtime_checks: bool = True,
    temperature: float = 0.5,
    relax_params: Mapping[str, Mapping[str, Any]] | None = None,
    relax_networks: Mapping[str, Any] | None = None,
    sum_and_sample_size: int = 2,
    control_variates: Mapping[str, ControlVariate] | None = None,
    return_signals: bool = False,
) -> Any:
    r"""The surrogate objective S(θ) of ``program(params, *args)`` (see the module docstring).

    Its value is the Monte-Carlo estimate of J(θ) = E[Σ terms] from ``num_particles``
    independent runs; ``jax.grad`` of it is an unbiased estimate of ∇J (the same as
    ``grad``), ``jax.hessian`` of ∇²J, ``jax.jvp`` of ``jax.grad`` of Hessian-vector
    products. Maximise it (or minimise ``-surrogate``) in any optax/flax loop:

    ```python
    loss = lambda p, k: -scorefn.programs.surrogate(program, p, k, x, num_particles=8)
    g = jax.grad(loss)(params, key)
    ```

    Args:
      program: ``program(params, *args)`` with ``numpyro.sample`` and ``numpyro.factor``.
      params: the pytree θ the gradient is taken with respect to (floating arrays).
      key: a JAX PRNG key; the same key gives the same bits. Particle k's i-th latent site
        (in the order the program reaches them) draws with
        ``split(key, (K, num_sites + 1))[k, i]``; the last key of each row seeds anything
        else that asks numpyro for randomness (a subsampled plate).
      num_particles: K, independent runs of the program.
      estimators: site name -> a name in ``ESTIMATORS`` (``"score"``, ``"rloo"``,
        ``"pathwise"``, ``"enumerate"``, ``"sum_and_sample"``, ``"measure_valued"``, ``"arm"``,
        ``"disarm"``, ``"rebar"``, ``"relax"``, ``"gumbel_softmax"``, ``"straight_through"``).
        Default: pathwise for sites with ``rsample`` that every reader uses differentiably,
        score otherwise.
      baselines: score site name -> a baseline from ``scorefn.baselines`` (or a number,
        an ``EmaState``, None). Default: leave-one-out over the particles (K ≥ 2).
      credit_assignment: weight each score site by the terms downstream of it only (and by
        the same plate index); False weights every site by the whole objective.
      validate: structural checks (unused params, a support that moves with θ).
      max_enumeration: the largest number of joint values enumerated per particle.
      temperature: the relaxations' temperature τ (``"gumbel_softmax"``,
        ``"straight_through"`` sites, and ``"rebar"`` sites without ``relax_params``).
      relax_params: ``"rebar"`` site name -> its control variate's ψ = ``{"eta": η,
        "log_temperature": log τ}`` (scalars), c(z) = η L_s(σ(z/τ)), instead of η = 1 and
        ``temperature``; with ``"net"`` too (the params of the site's network in
        ``relax_networks``), c(z) = η L_s(σ(z/τ)) + r_ψ(σ(z/τ)): RELAX. The estimate is
        unbiased for any ψ and differentiable in it, so ψ can learn to lower the variance:
        ``scorefn.programs.Relax`` does that.
      relax_networks: ``"rebar"`` site name -> a flax module r_ψ mapping one element of the
        site's relaxed value (the site's plates indexed) to a scalar.
      sum_and_sample_size: k of the ``"sum_and_sample"`` sites: the program runs k times per
        particle for each, once for each of the k - 1 most probable classes (weighted by
        their probabilities) and once for a class drawn from the rest.
      runtime_checks: under ``jit``, stop with a ValueError naming the term and particle when
        a term is not finite. The check is a ``lax.cond`` whose error branch calls back to
        Python; a program with a host callback leaves jax's fast C++ dispatch path (a cost
        per call, reported in BENCHMARKS.md). False drops it
        for tight loops of small programs, at a price: a non-finite term then makes the
        surrogate's value NaN, but its gradient can look finite (log y at y < 0 has the
        gradient 1/y), so check the value yourself.
      control_variates: score site name -> a control variate h of
        ``scorefn.control_variates`` (``generic``, ``score``, ``delta_method``), applied to
        the site's value: the gradient gains -β ⊙ (h(x) ∇θ log p(x) - ∇θ E[h]) per
        particle, β per coordinate of θ (``"optimal"``: fitted on the other particles, so
        still unbiased). The site's learning signal must be one number per particle: a site
        outside plates (or ``credit_assignment=False``), no enumerated site in the program.
        First order only, like the measure-valued and antithetic sites.
      return_signals: also return ``{site: L_s}``, each score site's learning signal
        (K, M, *plates), to update an EMA baseline: ``state = ema.update(L, state)``.
    """
    _check_call(params, key, num_particles)
    chosen = choose(program, params, args, num_particles=num_particles, estimators=estimators,
                    baselines=baselines, credit_assignment=credit_assignment, validate=validate,
                    max_enumeration=max_enumeration, runtime_checks=runtime_checks,
                    temperature=temperature, sum_and_sample_size=sum_and_sample_size,
                    relax_params=relax_params, relax_networks=relax_networks,
                    control_variates=control_variates)
    value, signals = chosen.parts(program, params, key, args)
    return (value, signals) if return_signals else value


@dataclasses.dataclass(frozen=True)
class Choice:
    """Every option of ``surrogate`` for one program, checked: the ``Plan`` (what tracing
    decides) and the options that are values, not structure (ψ of ``"rebar"`` sites, control
    variates)."""

    plan: Plan
    num_particles: int
    relax: tuple[Mapping[str, Any], Mapping[str, Any]]
    control_variates: Mapping[str, ControlVariate]

    def parts(self, program: Callable, params: Any, key: jax.Array, args: tuple,
              cut: frozenset = frozenset()) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``surrogate_parts`` with these options: the value and the learning signals."""
        return surrogate_parts(program, params, key, args, self.plan, self.num_particles, cut,
                               self.relax, self.control_variates)


def choose(program: Callable, params: Any, args: tuple, *, num_particles: int = 8,
           relax_params: Mapping[str, Mapping[str, Any]] | None = None,
           relax_networks: Mapping[str, Any] | None = None,
           control_variates: Mapping[str, ControlVariate] | None = None,
           **plan_options: Any) -> Choice:
    """``surrogate``'s options checked against the program (``plan_options`` are ``plan``'s)."""
    p = plan(program, params, args, num_particles=int(num_particles), **plan_options)
    return Choice(p, int(num_particles), _checked_relax(relax_params, relax_networks, p),
                  _checked_control_variates(control_variates, p, int(num_particles)))


def _checked_control_variates(control_variates: Mapping[str, Any] | None, p: Plan,
                              num_particles: int) -> dict[str, ControlVariate]:
    control_variates = dict(control_variates or {})
    for site, cv in control_variates.items():
        if site not in p.score_names:
            known = f"its score sites are {list(p.score_names)}" if p.score_names else (
                "it has no score site")
            raise ValueError(f"control_variates names site {site!r}, which is not a score-function "
                             f"site of the program ({known}): a control variate corrects the "
                             "score-function estimate")
        if not isinstance(cv, ControlVariate):
            raise TypeError(f"control_variates[{site!r}] must come from scorefn.control_variates "
                            f"(generic, score, delta_method); got {type(cv).__name__}")
        if p.grid:
            raise ValueError(f"control_variates[{site!r}]: the program has enumerated sites "
                             f"({list(p.enumerate_names)}); a control variate needs one learning "
                             "signal per particle, not one per enumerated branch")
        if p.credit_assignment and p.sites[site].plates:
            raise ValueError(f"control_variates[{site!r}]: the site is inside the plate(s) "
                             f"{[pl.name for pl in p.sites[site].plates]}, where credit "
                             "assignment gives each element its own learning signal; a control "
                             "variate needs one per particle: pass credit_assignment=False")
        if isinstance(cv.coefficient, str) and num_particles < 2:
            raise ValueError(f"control_variates[{site!r}]: coefficient={cv.coefficient!r} is "
                             "fitted across particles: num_particles must be >= 2, got "
                             f"{num_particles}")
    return control_variates


def _checked_relax(relax_params: Mapping[str, Any] | None,
                   relax_networks: Mapping[str, Any] | None,
                   p: Plan) -> tuple[dict[str, Any], dict[str, Any]]:
    relax_params, relax_networks = dict(relax_params or {}), dict(relax_networks or {})
    for name, mapping in (("relax_params", relax_params), ("relax_networks", relax_networks)):
        for site in mapping:
            if site not in p.control_variate_names:
                raise ValueError(f"{name} names site {site!r}, which is not a 'rebar' or "
                                 f"'relax' site of the program (those are "
                                 f"{list(p.control_variate_names)}); give it "
                                 "estimators={site: 'rebar'} (or 'relax')")
    for site in p.control_variate_names:
        if p.estimators[site] == "relax" and site not in relax_networks:
            raise ValueError(f"site {site!r}: estimator 'relax' learns a control-variate network: "
                             f"pass relax_networks={{{site!r}: a flax module}} and its params in "
                             "relax_params (scorefn.programs.relax(...).surrogate_options(state))")
    for site in relax_networks:
        if p.estimators[site] != "relax":
            raise ValueError(f"relax_networks gives site {site!r} a network, but its estimator is "
                             f"{p.estimators[site]!r}: a control variate with a network is "
                             "'relax' (estimators={site: 'relax'})")
        if site not in relax_params:
            raise ValueError(f"relax_networks[{site!r}] needs its params: relax_params[{site!r}] "
                             "= {'eta', 'log_temperature', 'net'} (scorefn.programs.Relax.init)")
    for site, psi in relax_params.items():
        expected = {"eta", "log_temperature"} | ({"net"} if site in relax_networks else set())
        if not isinstance(psi, Mapping) or set(psi) != expected:
            raise ValueError(f"relax_params[{site!r}] must have the keys {sorted(expected)} "
                             f"(η, log τ{', the network params' if 'net' in expected else ''}); "
                             f"got {psi!r}")
        for name in ("eta", "log_temperature"):
            if jnp.shape(psi[name]) != ():
                raise ValueError(f"relax_params[{site!r}][{name!r}] must be a scalar; got shape "
                                 f"{jnp.shape(psi[name])}")
    return relax_params, relax_networks


def grad(program: Callable, params: Any, key: jax.Array, *args: Any, num_particles: int = 8,
         **options: Any) -> Any:
    r"""Unbiased estimate of ∇θ E[Σ terms] of ``program(params, *args)``, shaped like params.

    Exactly ``jax.grad`` of ``surrogate`` with the same arguments; ``options`` are
    ``surrogate``'s (``estimators``, ``baselines``, ``credit_assignment``, ``validate``,
    ``max_enumeration``, ``runtime_checks``, ``temperature``).
    """
    if "return_signals" in options:
        raise TypeError("grad returns the gradient only; for the learning signals use "
                        "jax.grad(surrogate(..., return_signals=True), has_aux=True)")
    _check_call(params, key, num_particles)
    return jax.grad(lambda p: surrogate(program, p, key, *args, num_particles=num_particles,
                                        **options))(params)
