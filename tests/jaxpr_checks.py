"""What a traced program asks of XLA, read from its jaxpr (nested ones included)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax


def _equations(jaxpr: Any) -> Iterator[Any]:
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else [value]:
                if hasattr(sub, "eqns"):
                    yield from _equations(sub)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    yield from _equations(sub.jaxpr)


def dot_precisions(fn: Callable, *args: Any) -> list[str]:
    """The precision of every matrix product ``fn(*args)`` traces to."""
    return [str(e.params.get("precision")) for e in _equations(jax.make_jaxpr(fn)(*args).jaxpr)
            if e.primitive.name == "dot_general"]


def primitive_count(closed_jaxpr: Any, name: str) -> int:
    """How many equations of ``closed_jaxpr`` (nested ones included) are primitive ``name``."""
    return sum(e.primitive.name == name for e in _equations(closed_jaxpr.jaxpr))
