"""JAX's persistent compilation cache, on by default in a user cache directory.

Compiling a training loop costs seconds on a CPU; the cache makes the second run of the same
program skip it. ``SCOREFN_COMPILATION_CACHE`` overrides the folder (``0`` turns it off); a
folder the user has set in ``jax.config`` is left alone.
"""

from __future__ import annotations

import os

import jax


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "scorefn", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (if no folder is set yet); returns the
    folder in use, or None when it is off."""
    setting = os.environ.get("SCOREFN_COMPILATION_CACHE")
    if setting == "0":
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and path is None:
        return current
    folder = path or setting or default_cache_dir()
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return folder
