r"""Reruns of a stochastic program with one site's value replaced: the first-order terms of
the measure-valued, antithetic (ARM, DisARM), REBAR/RELAX and control-variate estimators.

Each reruns a particle with every other site drawing with the same keys, so that the
difference of the terms the site reaches is that site's contribution alone; the result is a
term of value 0 whose first derivative is the estimate (``surrogate`` adds it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro

from scorefn import guards
from scorefn.control_variates import ControlVariate, with_control_variate
from scorefn.discrete import (
    antithetic_weights,
    bernoulli_logits,
    conditional_uniform,
    logistic_perturbed,
    rebar_estimate,
)
from scorefn.measure_valued import as_supported, distribution_parameters, perturbations
from scorefn.programs.tracing import (
    Recorder,
    canonical,
    record,
)

if TYPE_CHECKING:  # plan imports the families, which import these terms
    from scorefn.programs.plan import Plan


class Particle(NamedTuple):
    """One particle's run of a program, with what a rerun of it needs: the program, its
    parameters and arguments, the plan, the particle's per-site keys and forced values (its
    branch of the enumerated sites), and the recorder of its own run."""

    program: Callable
    params: Any
    args: tuple
    plan: Plan
    site_keys: jax.Array
    forced: dict
    recorder: Recorder


def measure_valued_term(particle: Particle, index: int, site: str) -> jax.Array:
    """Σ_ij stop_gradient(c_ij (L⁺_ij - L⁻_ij)) · (φ_ij - stop_gradient(φ_ij)): value 0, its
    gradient the weak-derivative estimate for site s, by the chain rule through its
    distribution parameters φ (Pflug 1989; Mohamed et al. 2020, section 6). L± are the
    terms s reaches, from runs of the program with element j of x_s replaced by a draw from
    p±_ij and every other site drawing with the same keys (common random numbers, so the
    terms element j does not reach cancel exactly)."""
    p, rec = particle.plan, particle.recorder
    if not p.downstream_terms[site]:
        return jnp.zeros(())
    x = jax.lax.stop_gradient(rec.latents[site]["value"])
    d = as_supported(rec.latents[site]["fn"], tuple(jnp.shape(x)))
    flat = x.reshape(1, -1).astype(jnp.result_type(float))
    key = jax.random.fold_in(particle.site_keys[-1], index + 1)

    def reached(value):
        return _reached(particle, site, value.reshape(x.shape).astype(x.dtype))

    def difference(plus, minus, j):
        return reached(flat[0].at[j].set(plus)) - reached(flat[0].at[j].set(minus))

    phis = distribution_parameters(d)
    out = jnp.zeros(())
    for phi, (c, plus, minus) in zip(phis, perturbations(d, key, flat)):
        diffs = jax.vmap(difference)(plus[0], minus[0], jnp.arange(flat.shape[1]))
        guard = guards.finite_guard((diffs, _nonfinite_reached_message(site)),
                                    enabled=p.runtime_checks)
        estimate = jax.lax.stop_gradient(c * diffs)
        phi = phi.reshape(-1)
        out = out + guards.guarded(jnp.sum(estimate * (phi - jax.lax.stop_gradient(phi))), guard)
    return out


def over_branches(fn: Callable, names: tuple[str, ...], grid: dict[str, np.ndarray]) -> Any:
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


def _reached(particle: Particle, site: str, value, by_plate: bool = False,
             differentiable: bool = False) -> jax.Array:
    """E[Σ terms reached from s | x_s = value]: one rerun of the particle with s forced
    (every other site drawing with the same keys) and θ detached, summed exactly over the
    enumerated sites below s; per element of s's plates if ``by_plate``; detached unless
    ``differentiable`` (then its gradient flows through ``value``)."""
    p = particle.plan
    maybe_stop = (lambda x: x) if differentiable else jax.lax.stop_gradient
    below = p.enumerated_descendants.get(site, ())
    frozen = jax.lax.stop_gradient(particle.params)

    def once(values):
        rec = record(particle.program, frozen, particle.site_keys[-1], particle.args,
                     Recorder(p.families, {**particle.forced, **values, site: value},
                              frozenset(), particle.site_keys[:len(p.estimators)],
                              p.estimators, p.temperature, p.sum_and_sample_size))
        total = _reached_terms(rec, p, site, by_plate)
        log_w = sum((jnp.sum(rec.latent_log_prob(e)) for e in below), jnp.zeros(()))
        return total, log_w

    if not below:
        return maybe_stop(once({})[0])
    totals, log_w = over_branches(once, below, p.grid)
    weights = jnp.exp(log_w).reshape(log_w.shape + (1,) * (totals.ndim - log_w.ndim))
    return maybe_stop(jnp.sum(weights * totals, axis=tuple(range(log_w.ndim))))


def antithetic_term(particle: Particle, site: str) -> jax.Array:
    """Σ_i stop_gradient((L_s(first) - L_s(second)) w_i) · (φ_i - stop_gradient(φ_i)) for an
    ARM or DisARM site: value 0, its gradient the antithetic estimate, through the logits φ
    (see ``scorefn.discrete``). The particle's run used the pair's first sample; the
    second comes from a rerun with every other site drawing with the same keys."""
    p, rec = particle.plan, particle.recorder
    if not p.downstream_terms[site]:
        return jnp.zeros(())
    u, logits, first, second = rec.drawn[site]
    # The particle's own run is one branch of the enumerated sites below s, weighted by its
    # probability given the first sample outside; the second sample's signal is summed over
    # those branches here.
    # Inside a plate, element i's pair is weighted by the terms with its plate index only
    # (the others' difference has mean zero given b_i, b̃_i): credit assignment.
    mine = jax.lax.stop_gradient(_reached_terms(rec, p, site, by_plate=True))
    other = _reached(particle, site, second, by_plate=True)
    diff = mine - other
    guard = guards.finite_guard((diff, _nonfinite_reached_message(site)),
                                enabled=p.runtime_checks)
    weights = antithetic_weights(logits, u, first, second, p.estimators[site])
    phi = bernoulli_logits(rec.latents[site]["fn"], tuple(jnp.shape(u)), p.estimators[site])
    estimate = jax.lax.stop_gradient(diff * weights)
    return guards.guarded(jnp.sum(estimate * (phi - jax.lax.stop_gradient(phi))), guard)


def rebar_term(particle: Particle, site: str, psi: Mapping[str, Any] | None = None,
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
    p, rec = particle.plan, particle.recorder
    if not p.downstream_terms[site]:
        return jnp.zeros(())
    u, w = rec.drawn[site]
    d = rec.latents[site]["fn"]
    phi = bernoulli_logits(d, tuple(jnp.shape(u)), "rebar")
    b = jax.lax.stop_gradient(jnp.asarray(rec.latents[site]["value"], phi.dtype))
    prob = jax.nn.sigmoid(phi)
    z = logistic_perturbed(phi, u)
    z_given_b = logistic_perturbed(phi, conditional_uniform(b, prob, w))
    temperature = p.temperature if psi is None else jnp.exp(psi["log_temperature"])

    def control(zz):
        value = jax.nn.sigmoid(zz / temperature).astype(phi.dtype)
        reached = _reached(particle, site, value, by_plate=True, differentiable=True)
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
    guard = guards.finite_guard((jax.lax.stop_gradient(jnp.stack([jnp.sum(signal), jnp.sum(c_z)])),
                                 _nonfinite_reached_message(site)), enabled=p.runtime_checks)
    log_p = b * jax.nn.log_sigmoid(phi) + (1 - b) * jax.nn.log_sigmoid(-phi)
    return guards.guarded(rebar_estimate(log_p, signal, c_z, c_given_b), guard)


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


def particle_keys(key: jax.Array, p: Plan, num_particles: int) -> jax.Array:
    """Each particle's site keys, (K, num_latents + 1). All particles' keys in one split (a
    split per particle inside the vmap costs ~10% more on CPU for a small program)."""
    return jax.random.split(key, (num_particles, len(p.estimators) + 1))


def control_variate_term(program, params, key, args, p: Plan, num_particles: int, site: str,
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
            return record(program, theta, site_keys[-1], args,
                       Recorder(p.families, {site: x}, frozenset(), site_keys[:n], p.estimators,
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
        scores, mean_grads, h = jax.vmap(parts)(particle_keys(key, p, num_particles),
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
