"""Input checks shared by the estimators, the programs and the applications, made when a
function is called (eagerly, or while ``jax.jit`` traces it): types, shapes, dtypes, options,
and the structural checks that read the traced program (which parameters a distribution
depends on, whether its support moves). Checks on values that exist only at run time are
``scorefn.guards``'; which outputs read which inputs is ``scorefn.dependencies``'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

from scorefn.dependencies import used_inputs


def is_key(x: Any) -> bool:
    """Whether ``x`` is a typed JAX PRNG key array (``jax.random.key``)."""
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def is_traced(x: Any) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def check_key(key: Any, name: str = "key") -> None:
    """Raise TypeError unless ``key`` is a JAX PRNG key (typed or legacy uint32[2])."""
    if isinstance(key, jax.Array | jax.core.Tracer):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            return
        if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
            return
        raise TypeError(
            f"{name} must be a JAX PRNG key from jax.random.key(seed) or jax.random.PRNGKey(seed); "
            f"got an array of dtype {key.dtype} and shape {key.shape}"
        )
    raise TypeError(
        f"{name} must be a JAX PRNG key from jax.random.key(seed) or jax.random.PRNGKey(seed); "
        f"got {type(key).__name__} {key!r}"
    )


#: What to do with a non-finite value of f: every policy scorefn knows, with its meaning.
#: Each entry point takes those that make sense for it (``check_nan_policy``).
NAN_POLICIES = {
    "raise": "stop with a ValueError naming how many values are not finite and the first",
    "drop": "leave those samples out of the estimate (outside jit only)",
    "penalize": "rank those candidates last (search strategies)",
}


def check_nan_policy(nan_policy: Any, accepted: tuple[str, ...]) -> str:
    """``nan_policy`` if it is one of the ``NAN_POLICIES`` this entry point ``accepted``."""
    if nan_policy not in accepted:
        raise ValueError(f"nan_policy must be one of {accepted}, got {nan_policy!r}")
    return nan_policy


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as a Python int if it is an int (a NumPy integer too, not a bool) of at least
    ``minimum``; else a ValueError naming ``name``: "steps must be an int >= 1, got 0"."""
    if (isinstance(value, bool) or not isinstance(value, int | np.integer)
            or value < minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_real(value: Any, name: str, low: float = -np.inf, high: float = np.inf, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a Python float if it is a finite real number (not a bool; a 0-d concrete
    array too) in the interval from ``low`` to ``high``, an end included unless ``low_open``
    or ``high_open``; else a ValueError naming ``name`` and the interval: "gamma must be a
    finite number in [0, 1], got 1.5"."""
    number = not isinstance(value, bool | np.bool_) and (
        isinstance(value, int | float | np.integer | np.floating)
        or (isinstance(value, np.ndarray | jax.Array) and not is_traced(value) and value.ndim == 0
            and (jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating))))
    ok = number and np.isfinite(float(value)) and (
        (float(value) > low if low_open else float(value) >= low)
        and (float(value) < high if high_open else float(value) <= high))
    if not ok:
        left = "(" if low_open or low == -np.inf else "["
        right = ")" if high_open or high == np.inf else "]"
        bound = f" in {left}{low:g}, {high:g}{right}".replace("inf", "∞")
        if low == -np.inf and high == np.inf:
            bound = ""
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def leaf_names(tree: Any, root: str = "params") -> list[str]:
    return [root + keystr(path) for path, _ in tree_flatten_with_path(tree)[0]]


def check_params_used(dist_fn: Callable, params: Any, samples: Any) -> None:
    """Raise if some leaf of ``params`` does not influence ``dist_fn(params).log_prob``."""
    num_param_leaves = len(jax.tree.leaves(params))

    def log_prob(p, x):
        return dist_fn(p).log_prob(x)

    used = used_inputs(log_prob, params, samples)
    if used is None:
        return
    unused = [name for name, u in zip(leaf_names(params), used[:num_param_leaves]) if not u]
    if unused:
        raise ValueError(
            f"{', '.join(unused)} does not affect dist_fn(params).log_prob: its score is "
            "identically zero, so its gradient would be silently zero. Remove it from params, "
            "or check that dist_fn uses it."
        )


def check_support_independent(dist_fn: Callable, params: Any) -> None:
    """Raise if the support of ``dist_fn(params)`` moves with ``params`` (e.g. Uniform(0, θ))."""

    def support_arrays(p):
        support = dist_fn(p).support
        fields = vars(support) if hasattr(support, "__dict__") else {}
        return [v for v in jax.tree.leaves(fields) if isinstance(v, jax.Array | jax.core.Tracer)]

    num_param_leaves = len(jax.tree.leaves(params))
    used = used_inputs(support_arrays, params)
    if used is None:
        return
    moving = [name for name, u in zip(leaf_names(params), used[:num_param_leaves]) if u]
    if moving:
        support = dist_fn(params).support
        raise ValueError(
            f"the support of dist_fn(params) ({support}) depends on {', '.join(moving)}: the "
            "score-function (log-derivative) estimator needs a support that does not depend on "
            "θ, because differentiating under the integral ignores the moving boundary, so the "
            "estimate would be biased. Reparameterise (e.g. x = θ·u with u ~ Uniform(0, 1)) and "
            "use estimator='pathwise'."
        )


def check_distribution(d: Any, name: str = "dist_fn(params)") -> None:
    """``d`` must be a numpyro Distribution (what every estimator samples and scores)."""
    import numpyro.distributions as dist

    if not isinstance(d, dist.Distribution):
        raise TypeError(f"{name} must return a numpyro.distributions.Distribution; got "
                        f"{type(d).__name__}")


def check_float_params(params: Any) -> None:
    """Every leaf of ``params`` floating-point: their gradient is what is estimated."""
    for leaf_name, leaf in zip(leaf_names(params), jax.tree.leaves(params)):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(f"{leaf_name} must be a floating-point array (its gradient is "
                            f"estimated); got dtype {jnp.result_type(leaf)}")


def check_samples_shape(d: Any, samples: Any) -> int:
    """Samples must be (N, *batch_shape, *event_shape) for the distribution ``d``."""
    expected = tuple(d.batch_shape) + tuple(d.event_shape)
    leaves = jax.tree.leaves(samples)
    if not leaves:
        raise ValueError("samples is empty")
    x = leaves[0]
    shape = tuple(jnp.shape(x))
    if len(leaves) == 1 and (len(shape) < 1 or shape[1:] != expected):
        raise ValueError(
            f"samples must have shape (num_samples, *batch_shape, *event_shape) = "
            f"(N, {', '.join(map(str, expected))}{',' if len(expected) == 1 else ''}) for "
            f"{type(d).__name__} with batch_shape {tuple(d.batch_shape)} and event_shape "
            f"{tuple(d.event_shape)}; got shape {shape}"
        )
    if shape[0] < 1:
        raise ValueError("samples holds no sample (N = 0); an estimate needs N >= 1")
    if len(leaves) == 1:
        check_samples_dtype(d, x)
    return shape[0]


def check_samples_dtype(d: Any, x: Any) -> None:
    """Float samples of a distribution that draws integers are refused where its log_prob
    cannot take them (a Categorical indexes its table with them: an error deep inside jax);
    where it can (Bernoulli, Poisson), 0.0 and 1.0 are fine and the support check applies."""
    try:
        drawn = jax.eval_shape(d.sample, jax.random.key(0)).dtype
    except Exception:  # a distribution without sample(): nothing to compare with
        return
    given = jnp.result_type(x)
    if not (jnp.issubdtype(drawn, jnp.integer) and jnp.issubdtype(given, jnp.floating)):
        return
    try:
        jax.eval_shape(d.log_prob, jax.ShapeDtypeStruct(jnp.shape(x), given))
    except TypeError:
        raise ValueError(
            f"samples must be integers for {type(d).__name__} (it draws {drawn}); got {given}: "
            f"convert them, e.g. samples.astype(jnp.int32)") from None


def check_values_shape(
    values: Any, num_samples: int, batch_shape: tuple[int, ...] | None = None
) -> jax.Array:
    """Values are (N,), or (N, *batch_shape) when per-factor values are allowed."""
    values = jnp.asarray(values)
    per_factor = batch_shape is not None and len(batch_shape) > 0
    if values.shape != (num_samples,) and not (
        per_factor and values.shape == (num_samples, *batch_shape)
    ):
        hint = ""
        if values.ndim == 0:
            hint = " (f returned a scalar: it must return one value per sample)"
        elif values.ndim > 1:
            hint = " (f must return one scalar per sample; reduce its output, e.g. with sum(-1))"
        also = (f", or (num_samples, *batch_shape) = {(num_samples, *batch_shape)} for "
                "per-factor learning signals" if per_factor else "")
        raise ValueError(
            f"values must have shape (num_samples,) = ({num_samples},), one f value per sample"
            f"{also}; got shape {values.shape}{hint}"
        )
    if not jnp.issubdtype(values.dtype, jnp.number):
        raise TypeError(f"values must be numeric, got dtype {values.dtype}")
    return values
