"""XLA compiler-option presets for scorefn's own programs, measured on CPU.

Each is passed as ``jax.jit(..., compiler_options=cpu_options(PRESET))``: on another backend
``cpu_options`` drops it, since the numbers below are XLA's CPU compiler's.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

# For programs that run once or a few times (initialisation, evaluation): XLA's CPU backend
# spends most of a small program's compile in LLVM optimisation and fusion emitters. Without
# them PPO's init compiles in 0.4 s instead of 1.5 s and its evaluation in 0.2 s instead of
# 1.0 s; both still run in milliseconds.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}

# For programs that run many times: LLVM at -O2 instead of XLA's default -O3. Measured on the
# training programs here: 0.3-0.5 s less compile time (PPO's chunk: 3.6 s -> 3.1 s to the end
# of its first chunk), the same time per update.
BACKEND_O2 = {"xla_backend_optimization_level": 2}

# XLA's CPU backend hands reductions to YNNPACK by default, and YNNPACK's reduce is slow when
# a short leading axis is summed out of a wide array, the shape of a search gradient (λ
# samples × d coordinates): 1.0 ms instead of 0.07 ms for 31 × 10000 float64, 5.8 ms instead
# of 0.15 ms for 10 × 100000 float32. These options keep YNNPACK for single matmuls only.
WIDE_REDUCTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def cpu_options(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """``options`` on the CPU backend, None elsewhere (they are tuned for XLA's CPU compiler).

    Only the options the installed XLA knows are kept: they are tuning, and XLA renames or
    removes its flags between jax releases (jax 0.11 dropped
    ``xla_cpu_use_fusion_emitters``), which would otherwise fail every compile."""
    if options is None or jax.default_backend() != "cpu":
        return None
    return {name: value for name, value in options.items() if _known(name, value)}


@functools.cache
def _known(name: str, value: Any) -> bool:
    """Whether XLA compiles a trivial program with the option ``name=value``."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(
            jax.ShapeDtypeStruct((), "float32")).compile()
    except Exception:  # XLA raises its own error type, which differs between releases
        return False
    return True
