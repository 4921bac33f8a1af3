"""``Strategy``: the protocol of a search-gradient strategy, the whole of what ``minimize`` calls.

A strategy is a frozen dataclass of options (with a ``popsize`` field, None for the
strategy's default, and a ``name``) and five methods on an explicit state, evosax style; a
strategy of your own subclasses ``Strategy`` and ``minimize`` runs it like a built-in one:

```python
state = strategy.init(key, x0, sigma0)       # the search distribution around x0
x, state = strategy.ask(state)               # (popsize, d) candidates
state = strategy.tell(state, x, fitness)     # one update from fitness to minimise
strategy.mean(state), strategy.scale(state)  # the current centre and search scale
```

``population_size`` and ``with_popsize`` (for IPOP restarts) come with the base class. The
natural evolution strategies (``NES``, every built-in one) also define ``search_gradient``
(the score-function gradient of E[utility] on the search distribution, from
``scorefn.score_grad``) and ``natural_gradient`` (from ``scorefn.fisher``);
``natural_search_gradient`` chains the two at rank utilities, and ``tell`` is one step along
it.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax

from scorefn import validation


def check_options(strategy: Any, *, positive: tuple[str, ...] = (),
                  nonnegative: tuple[str, ...] = ()) -> None:
    """ValueError naming the first option of ``strategy`` out of its range: ``popsize`` None
    or an int >= 2 (ranking needs two candidates: with one, every utility is 0 and the search
    never moves), each option in ``positive`` None or a positive number, each in
    ``nonnegative`` a number >= 0. A strategy's ``__post_init__`` calls it."""
    if strategy.popsize is not None:
        validation.check_int(strategy.popsize, "popsize", 2)
    for names, low_open in ((positive, True), (nonnegative, False)):
        for name in names:
            value = getattr(strategy, name)
            if value is not None and not validation.is_traced(value):
                validation.check_real(value, name, 0.0, low_open=low_open)


class Strategy(abc.ABC):
    """Base class of the strategies that ``scorefn.es.minimize`` runs (see the module)."""

    #: The strategy's name in ``scorefn.es.STRATEGIES`` (a dataclass field in subclasses).
    name: str
    popsize: int | None

    @abc.abstractmethod
    def init(self, key: jax.Array, x0: jax.Array, sigma0: float = 1.0) -> Any:
        """The state of a search distribution centred on ``x0`` with scale ``sigma0``."""

    @abc.abstractmethod
    def ask(self, state: Any) -> tuple[jax.Array, Any]:
        """``popsize`` candidates, shape (popsize, d), and the state with its key advanced."""

    @abc.abstractmethod
    def tell(self, state: Any, x: jax.Array, fitness: jax.Array) -> Any:
        """The state after one update from the candidates ``x`` and their fitness (to
        minimise; NaN/inf ranks last)."""

    @abc.abstractmethod
    def mean(self, state: Any) -> jax.Array:
        """The centre of the search distribution, shape (d,)."""

    @abc.abstractmethod
    def scale(self, state: Any) -> jax.Array:
        """The search scale, a scalar: ``minimize`` stops at ``tol_x`` below it."""

    def population_size(self, state: Any) -> int:
        """λ, read from the shape ``ask`` would return without drawing (an eager ``ask``
        would compile)."""
        return jax.eval_shape(self.ask, state)[0].shape[0]

    def with_popsize(self, popsize: int) -> Strategy:
        """The same strategy with another population size (IPOP restarts grow it)."""
        return dataclasses.replace(self, popsize=popsize)


class NES(Strategy):
    """A natural evolution strategy: ``tell`` steps along ``natural_search_gradient``, the
    natural gradient (``scorefn.fisher``) of the score-function search gradient
    (``scorefn.score_grad``) at rank utilities. Every built-in strategy is one."""

    @abc.abstractmethod
    def search_gradient(self, state: Any, x: jax.Array, values: jax.Array, *,
                        runtime_checks: bool = True) -> Any:
        """Σ_k values_k ∇θ log p_θ(x_k) on the search distribution's parameters θ
        (``runtime_checks``: ``scorefn.score_grad``'s, passed on)."""

    @abc.abstractmethod
    def natural_gradient(self, state: Any, grad: Any) -> Any:
        """F(θ)⁻¹ ``grad``, with the Fisher information of the search distribution."""

    def natural_search_gradient(self, state: Any, x: jax.Array, utilities: jax.Array) -> Any:
        """``natural_gradient`` of ``search_gradient`` at rank utilities: NES's update direction.

        Without the estimator's run-time finiteness guard on the values: utilities are
        finite by construction (non-finite fitness ranks last), so the guard could never
        fire, and its host callback would keep the compiled program out of JAX's persistent
        compilation cache (a second ``scorefn optimize`` would compile again).
        """
        return self.natural_gradient(
            state, self.search_gradient(state, x, utilities, runtime_checks=False))
