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
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from scorefn import guards, validation
from scorefn.control_variates import ControlVariate
from scorefn.programs.plan import MAX_ENUMERATION, Plan, plan
from scorefn.programs.reruns import (
    Particle,
    control_variate_term,
    over_branches,
    particle_keys,
)
from scorefn.programs.tracing import (
    Recorder,
    canonical,
    record,
)
from scorefn.runs.devices import mesh_of, split


def magic_box(tau: jax.Array) -> jax.Array:
    r"""□(τ) = exp(τ - stop_gradient(τ)): value 1, and ∇□(τ) = □(τ) ∇τ at every order."""
    return jnp.exp(tau - jax.lax.stop_gradient(tau))


def _nonfinite_term_message(name: str) -> Callable[[np.ndarray], str | None]:
    return guards.nonfinite_message(lambda kind, first, bad, total: (
        f"term {name!r} of the program is {kind} at particle {first} ({bad} of {total} "
        "particles): J = E[Σ terms] needs finite terms. Check the factor's value (or the "
        "observed site's log-probability) for the sampled values"))


def _particles(program, params, key, args, p: Plan, num_particles: int, cut: frozenset,
               relax: tuple[Mapping[str, Any], Mapping[str, Any]],
               kept: tuple[str, ...] = (), mesh: Any = None):
    """Every particle's terms and score sites' log-probabilities, canonical, shaped
    (K, *branches, *plates): one branch axis per enumerated site (one of size 1 if none);
    each enumerated site's log-probability, (K, *branches); and the values of the sites
    ``kept`` (detached), (K, *branches, *value_shape)."""
    order = p.plates

    num_latents = len(p.estimators)

    def one(site_keys, forced):
        rec = record(program, params, site_keys[-1], args,
                     Recorder(p.families, forced, cut, site_keys[:num_latents], p.estimators,
                              p.temperature, p.sum_and_sample_size))
        terms = {t: canonical(rec.terms[t]["value"], p.sites[t].plates, order) for t in p.term_names}
        scores = {s: canonical(rec.latent_log_prob(s), p.sites[s].plates, order)
                  for s in p.score_names}
        enum = {e: jnp.sum(rec.latent_log_prob(e)) for e in p.enumerate_names}
        particle = Particle(program, params, args, p, site_keys, forced, rec)
        families = p.families
        own_terms = [families[s].term(particle, s, p.of_family(families[s].name).index(s), relax)
                     for s in p.estimators if s not in cut]  # None: the family has none
        rerun_terms = sum((t for t in own_terms if t is not None), jnp.zeros(()))
        values = {s: jax.lax.stop_gradient(rec.latents[s]["value"]) for s in kept}
        return terms, scores, enum, rerun_terms, values

    def particle(k):
        if not p.grid:
            return jax.tree.map(lambda x: x[None], one(k, {}))
        return over_branches(lambda forced: one(k, forced), p.enumerate_names, p.grid)

    with numpyro.validation_enabled(False):
        return jax.vmap(particle)(split(particle_keys(key, p, num_particles), mesh))


def surrogate_parts(program, params, key, args, p: Plan, num_particles: int,
                    cut: frozenset = frozenset(),
                    relax: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
                    control_variates: Mapping[str, ControlVariate] | None = None,
                    mesh: Any = None):
    """The surrogate's value and each score site's learning signal (K, *branches, *plates);
    with a ``mesh`` the particles run split across its devices."""
    control_variates = dict(control_variates or {})
    terms, scores, enum, rerun_terms, values = _particles(
        program, params, key, args, p, num_particles, cut, relax, tuple(control_variates), mesh)
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
    guard = guards.finite_guard(*[(jax.lax.stop_gradient(terms[t]), _nonfinite_term_message(t))
                                  for t in p.term_names], enabled=p.runtime_checks)
    branch_shape = terms[p.term_names[0]].shape[:first_plate]
    enum_log_prob = sum(enum.values(), jnp.zeros(branch_shape))

    total = rerun_terms
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
        value = value + control_variate_term(program, params, key, args, p, num_particles, s,
                                              cv, values[s], signals[s])
    return guards.guarded(value, guard), signals


def _check_call(params, key, num_particles):
    validation.check_key(key)
    validation.check_int(num_particles, "num_particles")
    validation.check_float_params(params)


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
    devices: Any = None,
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
      devices: split the K particles across devices, the rest replicated: a count, a list of
        devices or a ``jax.sharding.Mesh`` (``scorefn.runs.devices``); under ``jit`` (a
        sharding constraint). The same estimate as on one device up to float32 rounding.
      return_signals: also return ``{site: L_s}``, each score site's learning signal
        (K, M, *plates), to update an EMA baseline: ``state = ema.update(L, state)``.
    """
    _check_call(params, key, num_particles)
    chosen = configure(program, params, args, num_particles=num_particles, estimators=estimators,
                    baselines=baselines, credit_assignment=credit_assignment, validate=validate,
                    max_enumeration=max_enumeration, runtime_checks=runtime_checks,
                    temperature=temperature, sum_and_sample_size=sum_and_sample_size,
                    relax_params=relax_params, relax_networks=relax_networks,
                    control_variates=control_variates, devices=devices)
    value, signals = chosen.parts(program, params, key, args)
    return (value, signals) if return_signals else value


@dataclasses.dataclass(frozen=True)
class Configuration:
    """Every option of ``surrogate`` for one program, checked: the ``Plan`` (what tracing
    decides) and the options that are values, not structure (ψ of ``"rebar"`` sites, control
    variates)."""

    plan: Plan
    num_particles: int
    relax: tuple[Mapping[str, Any], Mapping[str, Any]]
    control_variates: Mapping[str, ControlVariate]
    mesh: Any = None  # the particles' devices (scorefn.runs.devices)

    def parts(self, program: Callable, params: Any, key: jax.Array, args: tuple,
              cut: frozenset = frozenset()) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``surrogate_parts`` with these options: the value and the learning signals."""
        return surrogate_parts(program, params, key, args, self.plan, self.num_particles, cut,
                               self.relax, self.control_variates, self.mesh)


def configure(program: Callable, params: Any, args: tuple, *, num_particles: int = 8,
           relax_params: Mapping[str, Mapping[str, Any]] | None = None,
           relax_networks: Mapping[str, Any] | None = None,
           control_variates: Mapping[str, ControlVariate] | None = None,
           devices: Any = None, **plan_options: Any) -> Configuration:
    """``surrogate``'s options checked against the program (``plan_options`` are ``plan``'s)."""
    p = plan(program, params, args, num_particles=int(num_particles), **plan_options)
    return Configuration(p, int(num_particles), _checked_relax(relax_params, relax_networks, p),
                         _checked_control_variates(control_variates, p, int(num_particles)),
                         mesh_of(devices, "particles"))


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
    sites = p.of_family("control_variate")
    for name, mapping in (("relax_params", relax_params), ("relax_networks", relax_networks)):
        for site in mapping:
            if site not in sites:
                raise ValueError(f"{name} names site {site!r}, which is not a 'rebar' or "
                                 f"'relax' site of the program (those are "
                                 f"{list(sites)}); give it "
                                 "estimators={site: 'rebar'} (or 'relax')")
    for site in sites:
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
