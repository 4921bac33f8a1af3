"""Box constraints for ``es.minimize``: f at the candidate clipped into the box plus a
quadratic penalty for the distance outside, which pushes the search back inside."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np


def penalized(f: Callable, x0: Any, bounds: tuple[Any, Any], penalty: float,
              evaluator: str) -> tuple[Callable, tuple[np.ndarray, np.ndarray]]:
    """f evaluated at the point clipped into ``bounds`` = (low, high), plus ``penalty``
    times the squared distance to the box, and the box as arrays of x0's shape."""
    x0 = np.asarray(x0, np.float64)
    try:
        low, high = (np.broadcast_to(np.asarray(b, np.float64), x0.shape) for b in bounds)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"bounds must be (low, high), each a number or an array of shape {x0.shape}") from error
    if np.any(np.isnan(low) | np.isnan(high)):  # an infinite end is a one-sided bound
        raise ValueError("bounds must not be NaN")
    if np.any(low >= high):
        raise ValueError("bounds must have low < high in every coordinate")
    outside = np.flatnonzero((x0 < low) | (x0 > high))
    if outside.size:
        i = int(outside[0])
        raise ValueError(f"x0[{i}] = {x0[i]:g} is outside bounds [{low[i]:g}, {high[i]:g}] "
                         f"({outside.size} coordinate(s) outside)")
    if evaluator == "jax":
        return _jax_bounded(f, tuple(low), tuple(high), float(penalty)), (low, high)

    return _BoxPenalty(f, low, high, float(penalty)), (low, high)


@dataclasses.dataclass(frozen=True)
class _BoxPenalty:
    """f at x clipped into the box plus ``penalty`` times the squared distance to it; a
    class rather than a closure so that a process pool can pickle it (when f pickles)."""

    f: Callable
    low: np.ndarray
    high: np.ndarray
    penalty: float

    def __call__(self, x):
        inside = np.clip(x, self.low, self.high)
        return float(self.f(inside)) + self.penalty * float(np.sum((x - inside) ** 2))


@functools.lru_cache(maxsize=64)
def _jax_bounded(f, low, high, penalty):
    low_array, high_array = jnp.asarray(low), jnp.asarray(high)

    def bounded(x):
        inside = jnp.clip(x, low_array.astype(x.dtype), high_array.astype(x.dtype))
        return f(inside) + penalty * jnp.sum((x - inside) ** 2)

    return bounded
