r"""REBAR per program site with its η and temperature learned (Tucker et al. 2017).

A ``"rebar"`` site's control variate is c(z) = η L_s(σ(z/τ)): the terms below the site with
the site's value relaxed. The estimate

    ĝ = (L_s(b) - c(z̃)) ∇θ log p(b) + ∇θ c(z) - ∇θ c(z̃)

is unbiased for any ψ = (η, log τ), so ψ is free to lower its variance. Since E[ĝ] does not
depend on ψ, ∇ψ E[‖ĝ‖²] = ∇ψ Var[ĝ]: one optax step on the squared norm of the estimate,
on the same samples, is a step down the variance (the paper's rule, as
``scorefn.discrete.Relax`` does for one distribution). State is explicit, optax style::

    rebar = scorefn.programs.LearnedRebar()
    state = rebar.init(["z"])                      # η = 1, τ = 0.5 per site to start
    g, state = rebar.grad(program, params, key, x, state=state, num_particles=4,
                          estimators={"z": "rebar"})   # ∇θ estimate, and ψ one step on
    scorefn.programs.grad(program, params, key, x, estimators={"z": "rebar"},
                          rebar=state.params)      # the estimate alone, with the learned ψ

Only η and τ are learned: a RELAX network per site (``scorefn.discrete.relax`` has one for a
single distribution) is not implemented for programs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scorefn.programs.surrogate import surrogate


class LearnedRebarState(NamedTuple):
    """ψ per site, ``{site: {"eta": η, "log_temperature": log τ}}``, and the optimiser's state."""

    params: dict[str, dict[str, jax.Array]]
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class LearnedRebar:
    """REBAR's η and τ per program site, trained down the estimator's variance."""

    optimizer: Any = None  # an optax GradientTransformation (default optax.adam(1e-2))

    def _optimizer(self) -> optax.GradientTransformation:
        return self.optimizer if self.optimizer is not None else optax.adam(1e-2)

    def init(self, sites: Sequence[str], eta: float = 1.0,
             temperature: float = 0.5) -> LearnedRebarState:
        """ψ for each of the ``"rebar"`` ``sites``, starting at ``eta`` and ``temperature``."""
        if not (isinstance(temperature, int | float) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if isinstance(sites, str) or not sites:
            raise ValueError(f"sites must be a non-empty list of 'rebar' site names, got {sites!r}")
        params = {s: {"eta": jnp.asarray(eta, jnp.float32),
                      "log_temperature": jnp.asarray(math.log(temperature), jnp.float32)}
                  for s in sites}
        return LearnedRebarState(params, self._optimizer().init(params))

    def grad(self, program: Callable, params: Any, key: jax.Array, *args: Any,
             state: LearnedRebarState, num_particles: int = 8, train: bool = True,
             **options: Any) -> tuple[Any, LearnedRebarState]:
        """The estimate of ∇θ E[Σ terms] (like ``scorefn.programs.grad`` with
        ``rebar=state.params``) and the state after one step of ψ down ‖ĝ‖² on the same
        samples (``train=False``: unchanged). ``options`` are ``surrogate``'s."""
        if "rebar" in options:
            raise TypeError("LearnedRebar.grad takes ψ from its state: pass state=, not rebar=")

        def estimate(psi):
            return jax.grad(lambda p: surrogate(program, p, key, *args,
                                                num_particles=num_particles, rebar=psi,
                                                **options))(params)

        if not train:
            return estimate(state.params), state

        def mean_square(psi):
            g = estimate(psi)
            return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(g)), g

        (_, g), psi_grad = jax.value_and_grad(mean_square, has_aux=True)(state.params)
        updates, opt_state = self._optimizer().update(psi_grad, state.opt_state, state.params)
        return g, LearnedRebarState(optax.apply_updates(state.params, updates), opt_state)
