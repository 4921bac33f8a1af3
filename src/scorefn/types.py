"""The types that scorefn's signatures share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numpyro.distributions import Distribution

#: ``params -> numpyro Distribution``: p_θ as a function of a parameter pytree θ.
DistFn = Callable[[Any], Distribution]

__all__ = ["DistFn"]
