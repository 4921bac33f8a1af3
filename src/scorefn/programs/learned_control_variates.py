r"""REBAR and RELAX per program site, their control variates learned (Tucker et al. 2017;
Grathwohl et al. 2018).

A ``"rebar"`` site's control variate is c_ψ(z) = η L_s(σ(z/τ)) + r_ψ(σ(z/τ)): the terms
below the site with the site's value relaxed, and for RELAX a network r_ψ (applied to each
element of the site's plates). The estimate

$$
\hat g = \left(L_s(b) - c_\psi(\tilde z)\right) \nabla_\theta \log p(b) + \nabla_\theta c_\psi(z) -
  \nabla_\theta c_\psi(\tilde z)
$$

is unbiased for any ψ, so ψ is free to lower its variance. Since E[ĝ] does not depend on ψ,
∇ψ E[‖ĝ‖²] = ∇ψ Var[ĝ]: one optax step on the squared norm of the estimate, on the same
samples, is a step down the variance (the papers' rule, as ``scorefn.discrete.Relax`` does
for one distribution). State is explicit, optax style:

```text
relax = scorefn.programs.rebar()                  # or programs.relax({"z": flax_module})
state = relax.init(["z"])                         # relax: init(["z"], key, inputs)
g, state = relax.grad(program, params, key, x, state=state, num_particles=4,
                      estimators={"z": "rebar"})  # ("relax" with a network): ∇θ, ψ step
scorefn.programs.surrogate(program, params, key, x, estimators={"z": "rebar"},
                           **relax.surrogate_options(state))   # in your own loop
```
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from scorefn.discrete import RelaxState
from scorefn.programs.surrogate import surrogate


@dataclasses.dataclass(frozen=True)
class Relax:
    """Learned control variates of ``"rebar"`` program sites: η and τ per site (REBAR), and
    a flax network per site in ``networks`` (RELAX); the program counterpart of
    ``scorefn.discrete.Relax``, with the same fields (a network per site) and state.
    ``temperature`` and ``eta``: ψ's starting values."""

    networks: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: Any = None  # an optax GradientTransformation (default optax.adam(1e-2))
    temperature: float = 0.5
    eta: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")

    def _optimizer(self) -> optax.GradientTransformation:
        return self.optimizer if self.optimizer is not None else optax.adam(1e-2)

    def init(self, sites: Sequence[str], key: jax.Array | None = None,
             inputs: Mapping[str, jax.Array] | None = None, *, eta: float | None = None,
             temperature: float | None = None) -> RelaxState:
        """ψ for each of the ``"rebar"`` ``sites``, starting at ``eta`` and ``temperature``
        (by default the estimator's own); a site with a network is initialised with ``key``
        on ``inputs[site]``, one element of its relaxed value (its plates indexed, e.g.
        ``jnp.zeros(16)`` for 16 latent bits per data point)."""
        eta = self.eta if eta is None else eta
        temperature = self.temperature if temperature is None else temperature
        if not (isinstance(temperature, int | float) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if isinstance(sites, str) or not sites:
            raise ValueError(f"sites must be a non-empty list of 'rebar' site names, got {sites!r}")
        unknown = sorted(set(self.networks) - set(sites))
        if unknown:
            raise ValueError(f"networks for {unknown}, which are not among the sites {list(sites)}")
        params: dict[str, dict[str, Any]] = {}
        for i, site in enumerate(sites):
            params[site] = {"eta": jnp.asarray(eta, jnp.float32),
                            "log_temperature": jnp.asarray(math.log(temperature), jnp.float32)}
            if site in self.networks:
                if key is None or inputs is None or site not in inputs:
                    raise ValueError(f"site {site!r} has a network: init needs key= and "
                                     f"inputs={{{site!r}: one element of its relaxed value}}")
                params[site]["net"] = self.networks[site].init(jax.random.fold_in(key, i),
                                                               jnp.asarray(inputs[site]))
        return RelaxState(params, self._optimizer().init(params))

    def surrogate_options(self, state: RelaxState) -> dict[str, Any]:
        """The keyword arguments of ``surrogate``/``grad`` that use the learned ψ."""
        return {"relax_params": state.params, "relax_networks": dict(self.networks)}

    def grad(self, program: Callable, params: Any, key: jax.Array, *args: Any,
             state: RelaxState, num_particles: int = 8, train: bool = True,
             **options: Any) -> tuple[Any, RelaxState]:
        """The estimate of ∇θ E[Σ terms] (``scorefn.programs.grad`` with this ψ) and the
        state after one step of ψ down ‖ĝ‖² on the same samples (``train=False``: the state
        unchanged). ``options`` are ``surrogate``'s."""
        if "relax_params" in options or "relax_networks" in options:
            raise TypeError("Relax.grad takes ψ from its state: pass state=, not relax_params= "
                            "or relax_networks=")

        def estimate(psi):
            return jax.grad(lambda p: surrogate(
                program, p, key, *args, num_particles=num_particles, relax_params=psi,
                relax_networks=dict(self.networks), **options))(params)

        if not train:
            return estimate(state.params), state

        def mean_square(psi):
            g = estimate(psi)
            return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(g)), g

        (_, g), psi_grad = jax.value_and_grad(mean_square, has_aux=True)(state.params)
        updates, opt_state = self._optimizer().update(psi_grad, state.opt_state, state.params)
        return g, RelaxState(optax.apply_updates(state.params, updates), opt_state)


def rebar(temperature: float = 0.5, eta: float = 1.0, optimizer: Any = None) -> Relax:
    """REBAR per site with η and τ learned (Tucker et al. 2017); ``scorefn.discrete.rebar``'s
    arguments. See ``Relax``."""
    return Relax({}, optimizer, temperature, eta)


def relax(networks: Mapping[str, Any], optimizer: Any = None, temperature: float = 0.5,
          eta: float = 1.0) -> Relax:
    """RELAX per site (Grathwohl et al. 2018): η, τ and a flax network r_ψ per site in
    ``networks``, one element of the site's relaxed value -> a scalar. See ``Relax``."""
    if not networks:
        raise ValueError("relax needs a network for at least one site; for η and τ alone use "
                         "scorefn.programs.rebar()")
    return Relax(dict(networks), optimizer, temperature, eta)
