"""Dependency analysis: which inputs of a traced function each output reads, structurally
(a dead-code pass over its jaxpr). Credit assignment in ``scorefn.programs``, the choice of
which sites are differentiable, and ``scorefn.validation``'s unused-parameter check rest on it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

# jax keeps its dead-code pass private (no public route in jax or jax.extend): the one place
# scorefn reaches into jax._src, named here so that tests can remove it.
DCE_MODULE = "jax._src.interpreters.partial_eval"


def dead_code_elimination() -> Callable:
    """jax's ``dce_jaxpr(jaxpr, used_outputs) -> (jaxpr, used_inputs)``, which tells which
    inputs each output reads, structurally. Without it the dependency analysis (credit
    assignment in programs, which sites are differentiable) cannot run, and guessing would
    change estimators silently, so its absence is an error."""
    try:
        return importlib.import_module(DCE_MODULE).dce_jaxpr
    except (ImportError, AttributeError) as error:
        raise ImportError(
            f"scorefn's dependency analysis needs {DCE_MODULE}.dce_jaxpr, which jax "
            f"{jax.__version__} does not have; install a jax release that has it (scorefn is "
            "tested with the version in its CI log)") from error


def _abstract(tree: Any) -> Any:
    def spec(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))

    return jax.tree.map(spec, tree)


def used_inputs(fn: Callable[..., Any], *args: Any) -> list[bool] | None:
    """Which flattened inputs of ``fn(*args)`` its outputs depend on (None if ``fn`` cannot be
    traced abstractly)."""
    dce_jaxpr = dead_code_elimination()
    try:
        closed = jax.make_jaxpr(fn)(*_abstract(args))
    except Exception:  # a dist_fn that cannot be traced abstractly: leave the checks to JAX
        return None
    jaxpr = closed.jaxpr
    if not jaxpr.outvars:
        return [False] * len(jaxpr.invars)
    _, used = dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    return list(used)


def output_dependencies(fn: Callable[..., Any], *args: Any) -> list[list[bool]] | None:
    """For each flattened output of ``fn(*args)``, which flattened inputs it depends on
    (structurally: a dead-code pass over the jaxpr); None if ``fn`` cannot be traced
    abstractly. Raises ImportError if jax's dead-code pass is gone (``dead_code_elimination``)."""
    dce_jaxpr = dead_code_elimination()
    try:
        jaxpr = jax.make_jaxpr(fn)(*_abstract(args)).jaxpr
    except Exception:  # leave it to the caller's conservative default
        return None
    rows = []
    for i in range(len(jaxpr.outvars)):
        _, used = dce_jaxpr(jaxpr, [j == i for j in range(len(jaxpr.outvars))])
        rows.append(list(used))
    return rows
