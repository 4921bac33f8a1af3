"""scorefn.dependencies: the jaxpr dead-code pass, and a clear error where jax lacks it."""

import importlib

import jax.numpy as jnp
import pytest

import scorefn


def test_output_dependencies_without_jax_dead_code_pass_raises(monkeypatch):
    rows = scorefn.dependencies.output_dependencies(lambda x, y: (x * 2, y), jnp.ones(2), jnp.ones(3))
    assert rows == [[True, False], [False, True]]
    monkeypatch.delattr(importlib.import_module(scorefn.dependencies.DCE_MODULE), "dce_jaxpr")
    with pytest.raises(ImportError, match="does not have; install a jax release"):
        scorefn.dependencies.output_dependencies(lambda x: x * 2, jnp.ones(3))
