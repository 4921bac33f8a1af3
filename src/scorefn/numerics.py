"""Numerical helpers, one per concern, so that algorithm code reads like its paper:

- ``full_precision``: matrix products at full precision where a cancellation needs it;
- ``solve_small_systems``: many small linear systems at once, fast on CPU.

Full precision, the one helper for every backend:

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
import jax.numpy as jnp


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Trace the matrix products inside this block at full float32 precision
    (``jax.default_matmul_precision("highest")``); it acts at trace time, so wrap the code
    that builds the computation, not the call of an already compiled function."""
    with jax.default_matmul_precision("highest"):
        yield


def solve_small_systems(matrices: jax.Array, rhs: jax.Array) -> jax.Array:
    """x with ``matrices[i] @ x[i] = rhs[i]`` for a batch of k × k systems, shapes (B, k, k)
    and (B, k). k = 1 divides, k = 2 uses Cramer's rule: a batched LAPACK solve of 2 × 2
    systems is about 6× slower on CPU (measured for the diagonal-Gaussian Fisher blocks of
    SNES and ``fisher.natural_gradient_elementwise``); larger k calls ``jnp.linalg.solve``."""
    k = rhs.shape[-1]
    if k == 1:
        return rhs / matrices[..., 0]
    if k == 2:
        a, b = matrices[..., 0, 0], matrices[..., 0, 1]
        c, d = matrices[..., 1, 0], matrices[..., 1, 1]
        det = a * d - b * c
        r0, r1 = rhs[..., 0], rhs[..., 1]
        return jnp.stack([(d * r0 - b * r1) / det, (a * r1 - c * r0) / det], axis=-1)
    return jnp.linalg.solve(matrices, rhs[..., None])[..., 0]
