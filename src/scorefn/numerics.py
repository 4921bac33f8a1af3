"""Numerical precision where a cancellation needs it: the one helper for every backend.

On a GPU, jax's default precision for float32 matrix products may be reduced (TF32 keeps
10 bits of mantissa; TPUs use bfloat16 passes). That is fine for a network's forward pass but
not where two nearly equal numbers are subtracted: a control variate h(x) against its
closed-form mean, or a covariance factor updated by a matrix exponential. Those computations
are traced inside ``full_precision``. On the CPU it changes nothing (XLA's CPU backend
always multiplies float32 at full precision), which the tests check by the jaxpr instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Trace the matrix products inside this block at full float32 precision
    (``jax.default_matmul_precision("highest")``); it acts at trace time, so wrap the code
    that builds the computation, not the call of an already compiled function."""
    with jax.default_matmul_precision("highest"):
        yield
