"""Run-time guards: checks on values that exist only when a compiled program runs.

A value check (non-finite ``f`` values, ``log_prob = -inf``, a distribution's argument out of
its constraint) raises at once on concrete arrays and through ``jax.debug.callback`` on
traced ones, so a jitted estimator stops with scorefn's message instead of returning NaN.
Inside a user's own ``jit`` the error's text ends with that message; scorefn's own loops
re-raise it as its ValueError (``runtime_errors``). Each public function with such a check
takes ``runtime_checks: bool = True`` and passes it to ``finite_guard``; training loops pass
False (a program with a host callback cannot be exported or stored in JAX's persistent
compilation cache) and check the step's outputs themselves.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn.validation import is_traced


def nonfinite_message(describe: Callable[[str, int, int, int], str]
                      ) -> Callable[[np.ndarray], str | None]:
    """A ``finite_guard`` message for values ``(N, ...)``, one row per sample or particle:
    None while every row is finite, else ``describe(kind, first, bad, total)``: ``"NaN"`` or
    ``"inf"`` for the first bad row, its index, the number of bad rows, N."""

    def message(values: np.ndarray) -> str | None:
        rows = values.reshape(values.shape[0], -1)
        bad = ~np.isfinite(rows).all(axis=1)
        if not bad.any():
            return None
        first = int(np.flatnonzero(bad)[0])
        kind = "NaN" if np.isnan(rows[first]).any() else "inf"
        return describe(kind, first, int(bad.sum()), len(bad))

    return message


class _ScorefnCheckFilter(logging.Filter):
    """Drops jax's log record of a failed host callback when the exception is one of
    scorefn's run-time checks: that error reaches the caller (see ``runtime_errors``),
    and the logged copy of its traceback would only repeat it."""

    _here = os.path.dirname(os.path.abspath(__file__))

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[2] is None:
            return True
        tb = record.exc_info[2]
        while tb is not None:
            if os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(self._here):
                return False
            tb = tb.tb_next
        return True


logging.getLogger("jax._src.callback").addFilter(_ScorefnCheckFilter())


_ERROR_KINDS = {"ValueError": ValueError, "TypeError": TypeError,
                "FloatingPointError": FloatingPointError}


def original_error(error: BaseException) -> Exception | None:
    """The ValueError (or TypeError) a run-time check raised in its host callback, rebuilt
    from the error that jax wraps it in when the check fires inside a compiled program (a
    ``JaxRuntimeError``, or on a jitted function's later calls an error of the callback's
    type, whose text starts ``INTERNAL: CpuCallback error``); None if ``error`` is no such
    wrapper."""
    text = str(error)
    if "allback" not in text:  # CpuCallback / CUDA callback errors only
        return None
    best = None
    # The exception's own line closes a Python traceback ("\nValueError: ..."); without the
    # traceback it follows the callback's prefix ("... calling callback: ValueError: ...").
    for name, kind in _ERROR_KINDS.items():
        for lead in ("\n", "allback: "):
            at = text.rfind(f"{lead}{name}: ")
            if at >= 0 and (best is None or at > best[0]):
                best = (at, kind, text[at + len(lead) + len(name) + 2:])
    if best is None:
        return None
    # nanobind may append the traceback after the message, under "At:"
    return best[1](best[2].split("\n\nAt:\n")[0].strip())


@contextlib.contextmanager
def runtime_errors(context: str | None = None):
    """Inside, a run-time check that fires in a compiled program reaches the caller as the
    ValueError or TypeError scorefn wrote (prefixed with ``context``, e.g. the step),
    instead of jax's ``JaxRuntimeError: INTERNAL: CpuCallback error ...``. Wrap your own
    call of a jitted function that uses scorefn with it:

    ```python
    with scorefn.guards.runtime_errors():
        g = jitted_step(params, key)
        g = jax.block_until_ready(g)   # errors surface when the result is ready
    ```
    """
    try:
        yield
    # jax's first call of a jitted function raises a JaxRuntimeError; its C++ fast path,
    # on later calls, the callback's own exception type with the same wrapped text.
    except (jax.errors.JaxRuntimeError, ValueError, TypeError, FloatingPointError) as error:
        original = original_error(error)
        if original is None:
            raise
        if context:
            original = type(original)(f"{context}: {original}")
        raise original from None


def guarded(value: jax.Array, guard: jax.Array) -> jax.Array:
    """``value`` with the zero of ``finite_guard`` joined as a factor, value · (1 + guard).

    Adding the guard to a value whose *gradient* is the result (a surrogate objective) would
    not keep the check: the reverse pass never needs the sum's other operand, so dead-code
    elimination removes the check from a program that computes only ``jax.grad``. As a
    factor its value is needed, and the product is exactly ``value``."""
    return value * (1.0 + guard.astype(value.dtype))


def finite_guard(
    *checks: tuple[Any, Callable[[np.ndarray], str | None]], ok: Any = None,
    enabled: bool = True,
) -> jax.Array:
    """Raise ``ValueError`` if a checked array holds a non-finite number; return a scalar 0.

    ``checks`` are ``(array_or_thunk, message_fn)`` pairs; the first ``message_fn`` that
    returns a message names the problem. Concrete arrays are checked now. Traced ones are
    checked at run time at almost no cost: a ``lax.cond`` on ``ok`` (default: every array is
    finite) whose error branch alone builds the arrays (thunks are called only there) and
    calls back to Python. The returned zero must be added to the caller's output, so the
    check cannot be removed by dead-code elimination. ``enabled=False`` (a caller's
    ``runtime_checks=False``) leaves traced arrays unchecked: no host callback in the
    program, whose caller checks its outputs itself.
    """
    message_fns = [m for _, m in checks]
    sources = [a for a, _ in checks]

    def build():
        return [jnp.asarray(a() if callable(a) else a) for a in sources]

    def message(*host_arrays):
        for array, message_fn in zip(host_arrays, message_fns):
            text = message_fn(np.asarray(array))
            if text is not None:
                return text
        return None

    dtype = jnp.result_type(float)
    arrays_now = None if ok is not None else build()
    if not is_traced(arrays_now if arrays_now is not None else [ok]):
        text = message(*(arrays_now if arrays_now is not None else build()))
        if text is not None:
            raise ValueError(text)
        return jnp.zeros((), dtype)

    if not enabled:
        return jnp.zeros((), dtype)

    def on_host(*host_arrays):
        text = message(*host_arrays)
        if text is not None:
            raise ValueError(text)
        return np.zeros((), dtype)

    if ok is None:
        ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays_now]))

    def on_host_batched(host_ok, *host_arrays):
        # Under jax.vmap the cond becomes a select that runs the error branch for the whole
        # batch: one call with every element, whose failing elements (``ok`` false) are
        # read one by one. ``ok`` has shape () unmapped, so its shape is the mapped axes.
        for index in np.argwhere(~np.asarray(host_ok, bool)):
            on_host(*(array[tuple(index)] for array in host_arrays))
        return np.zeros(np.shape(host_ok), dtype)

    def error_branch(ok):
        return jax.pure_callback(on_host_batched, jax.ShapeDtypeStruct((), dtype), ok, *build(),
                                 vmap_method="broadcast_all")

    return jax.lax.cond(ok, lambda _: jnp.zeros((), dtype), error_branch, ok)


def argument_checks(d: Any, name: str = "dist_fn(params)") -> tuple[Any, list]:
    """Whether every argument given to ``d`` (and to the distributions it wraps) satisfies
    its numpyro constraint (a positive scale, probabilities in [0, 1], a positive Dirichlet
    concentration, finite locations), as ``(ok, checks)`` for ``finite_guard``: the
    validity masks are computed in the program, the message on the host names the argument,
    its constraint and the first bad value."""
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    oks, checks = [], []
    layer, path = d, name
    while True:
        given = vars(layer)
        for arg, constraint in getattr(layer, "arg_constraints", {}).items():
            value = given.get(arg)
            if value is None or not (hasattr(value, "shape") or isinstance(value, float | int)):
                continue  # not given (a lazily derived argument) or not numeric
            # Through an event-wise constraint to the elementwise one, so that the message
            # can point at the bad element (a Dirichlet's zero concentration).
            while isinstance(constraint, constraints.independent):
                constraint = constraint.base_constraint
            valid = jnp.asarray(constraint.check(jnp.asarray(value)))
            oks.append(jnp.all(valid))
            checks.append((_validity_array(valid, value),
                           _argument_message(f"{path}.{arg}", constraint)))
        if isinstance(layer, dist.Independent | dist.ExpandedDistribution | dist.MaskedDistribution):
            layer, path = layer.base_dist, f"{path}.base_dist"
        else:
            break
    ok = jnp.all(jnp.stack(oks)) if oks else jnp.asarray(True)
    return ok, checks


def _validity_array(valid: Any, value: Any) -> jax.Array:
    """One row of the validity mask and one of the values (broadcast to a common shape), for
    the host-side message."""
    valid, value = jnp.asarray(valid), jnp.asarray(value, jnp.result_type(float))
    if valid.shape != value.shape:  # event constraints (simplex, ...) reduce the last axis
        valid = jnp.broadcast_to(valid[..., None], value.shape) if valid.ndim < value.ndim else valid
    shape = jnp.broadcast_shapes(valid.shape, value.shape)
    return jnp.stack([jnp.broadcast_to(valid, shape).astype(value.dtype),
                      jnp.broadcast_to(value, shape)])


def _argument_message(label: str, constraint: Any) -> Callable[[np.ndarray], str | None]:
    def message(valid_and_value: np.ndarray) -> str | None:
        valid, value = valid_and_value[0].astype(bool), valid_and_value[1]
        if valid.all():
            return None
        bad = ~valid
        first = np.unravel_index(int(np.argmax(bad.reshape(-1))), bad.shape) if bad.ndim else ()
        return (f"{label} is outside its constraint {type(constraint).__name__.lstrip('_')}: "
                f"{int(bad.sum())} of {bad.size} value(s) invalid, the first "
                f"{float(value[first]):g}" + (f" at index {tuple(int(i) for i in first)}"
                                               if bad.ndim else "")
                + "; the estimate would be NaN or wrong. Check the params that build it")

    return message


def nonfinite_values_message(values: np.ndarray) -> str | None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    count = int(bad.sum())
    first = np.unravel_index(int(np.argmax(bad.reshape(-1))), values.shape)
    index = first[0] if len(first) == 1 else first
    return (
        f"f returned {count} non-finite value(s) (NaN or inf) out of {values.size}; the first at "
        f"sample index {index} is {values[first]}. Fix f, or pass nan_policy='drop' to drop "
        "those samples from the estimate."
    )


def nonfinite_estimate_message(estimate: np.ndarray) -> str | None:
    """For an estimate (its leaves raveled into one vector) checked after f's values, the
    distribution's arguments and log p: what is left to blame when it is not finite."""
    bad = ~np.isfinite(estimate)
    if not bad.any():
        return None
    return (
        f"the gradient estimate has {int(bad.sum())} non-finite coordinate(s) (NaN or inf) of "
        f"{estimate.size} although f's values are finite: the baseline or the control variate "
        "gave a non-finite value (a NaN constant, an EMA state that became NaN, a NaN "
        "coefficient), or (f - b)·∇θ log p overflowed (or, with validate=False, which skips "
        "that check, a sample lies outside the support)"
    )


def neg_inf_log_prob_message(log_prob: np.ndarray) -> str | None:
    bad = ~np.isfinite(log_prob)
    if not bad.any():
        return None
    count = int(bad.sum())
    first = int(np.argmax(bad.reshape(-1)))
    return (
        f"{count} sample(s) have log_prob = {log_prob.reshape(-1)[first]} under dist_fn(params) "
        f"(first at sample index {np.unravel_index(first, log_prob.shape)[0]}): the samples lie "
        "outside the distribution's support or were not drawn from it, so their score is undefined."
    )
