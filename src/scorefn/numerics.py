"""Numerical helpers, one per concern, so that algorithm code reads like its paper:

- ``full_precision``: matrix products at full precision where a cancellation needs it;
- ``matmul_epsilon``: the machine epsilon the backend's float32 matrix products really have,
  measured, from which a tolerance is derived;
- ``solve_small_systems``: many small linear systems at once, fast on CPU;
- ``ratio_or_zero``: a / c, with 0 where c = 0 (and a gradient that stays finite there).

Full precision, the one helper for every backend:

On a GPU, jax's default precision for float32 matrix products may be reduced (TF32 keeps
10 bits of mantissa; TPUs use bfloat16 passes). That is fine for a network's forward pass but
not where two nearly equal numbers are subtracted: a control variate h(x) against its
closed-form mean, or a covariance factor updated by a matrix exponential. Those computations
are traced inside ``full_precision``. On the CPU it changes nothing (XLA's CPU backend
always multiplies float32 at full precision), which the tests check by the jaxpr instead.

Elsewhere reduced precision is the right trade (a policy network's forward pass), and two
programs may then compute the same product at different precisions: XLA may hand a small
product to its own emitter and a large one to cuBLAS in TF32. ``matmul_epsilon`` measures
the machine epsilon ε of the default product, so that a comparison of two such results
allows the error a product of rounded inputs can have, |fl(a)ᵀ fl(b) - aᵀb| ≤
(2ε + ε²) Σ|a_i b_i|, and no more.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Trace the matrix products inside this block at full float32 precision
    (``jax.default_matmul_precision("highest")``); it acts at trace time, so wrap the code
    that builds the computation, not the call of an already compiled function."""
    with jax.default_matmul_precision("highest"):
        yield


def matmul_epsilon(product: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> float:
    """The machine epsilon of float32 matrix products at jax's default precision on the
    default backend, measured: 2⁻²³ (``finfo(float32).eps``) where they multiply float32
    exactly (CPU, or a GPU asked for ``"highest"``), 2⁻¹⁰ for TF32 (NVIDIA GPUs since Ampere),
    2⁻⁷ for one bfloat16 pass. An input is rounded by less than ε relative, whether the
    hardware rounds to nearest or truncates.

    The probe multiplies 1 + 2⁻ᵏ by 1 through a 128 × 128 product for k = 1..23; ε = 2⁻ᵐ for
    the largest m whose 1 + 2⁻ᵐ comes back exactly. ``product`` replaces the jitted
    ``jnp.matmul`` (a test emulates a precision with it). The default backend's answer is
    cached per backend and ``jax_default_matmul_precision``.
    """
    if product is None:
        return _default_matmul_epsilon(str(jax.config.jax_default_matmul_precision),
                                       jax.default_backend())
    return _measure_matmul_epsilon(product)


@functools.cache
def _default_matmul_epsilon(precision: str, backend: str) -> float:
    return _measure_matmul_epsilon(jax.jit(jnp.matmul))


def _measure_matmul_epsilon(product: Callable[[jax.Array, jax.Array], jax.Array]) -> float:
    n, bits = 128, 23
    probes = 1.0 + 2.0 ** -np.arange(1, bits + 1, dtype=np.float32)
    # Row k of a holds 1 + 2^-k in its first column and zeros elsewhere; b = I keeps it.
    a = np.zeros((n, n), np.float32)
    a[:bits, 0] = probes
    back = np.asarray(jax.device_get(product(jnp.asarray(a), jnp.eye(n, dtype=jnp.float32))))
    exact = back[:bits, 0] == probes
    mantissa = bits if exact.all() else int(exact.argmin())
    return 2.0 ** -max(mantissa, 1)


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


def ratio_or_zero(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator elementwise, 0 where the denominator is 0. The division never
    sees a zero, so neither the value nor its gradient is NaN there."""
    zero = denominator == 0
    return jnp.where(zero, 0.0, numerator / jnp.where(zero, 1.0, denominator))
