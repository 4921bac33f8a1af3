"""Shared fixtures. Statistical helpers and closed-form problems live in closed_forms.py."""

import os
import tempfile

import jax
import pytest

# Workers of pytest-xdist compile many of the same estimators: share XLA's compilation cache.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("SCOREFN_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "scorefn-jax-cache")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def key():
    return jax.random.key(0)
