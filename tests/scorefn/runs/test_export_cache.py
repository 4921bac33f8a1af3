"""The on-disk cache of traced programs (jax.export): same results, no tracing on a hit."""

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkpoint_files import kind_of, malicious_pickle

from scorefn.runs import compiler_options, export_cache


class Carry(NamedTuple):
    x: jax.Array
    key: jax.Array


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(export_cache, "_programs_dir", lambda: str(tmp_path))
    return tmp_path


def _step_counting(traces):
    def step(carry, scale):
        traces.append(1)
        key, sub = jax.random.split(carry.key)
        y = carry.x * scale + jax.random.normal(sub, carry.x.shape)
        return Carry(y, key), {"mean": jnp.mean(y)}
    return step


def _carry():
    return Carry(jnp.arange(3.0), jax.random.key(7))


def _same(a, b):
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_a_cached_program_equals_jit_and_is_not_traced_again(folder):
    traces = []
    expected = jax.jit(_step_counting([]))(_carry(), 2.0)
    first = export_cache.cached_jit(_step_counting(traces), key=("test", 1))(_carry(), 2.0)
    _same(first, expected)
    assert len(list(folder.glob("*.program"))) == 1
    traced = len(traces)
    assert traced >= 1
    # A new cached_jit (as in a new process) loads the program: no Python tracing at all.
    again = export_cache.cached_jit(_step_counting(traces), key=("test", 1))
    second = again(_carry(), 2.0)
    assert len(traces) == traced
    _same(second, expected)
    assert isinstance(second, tuple) and isinstance(second[0], Carry)
    assert jnp.issubdtype(second[0].key.dtype, jax.dtypes.prng_key)
    # and the loaded program chains: its output carry is a valid input
    _same(again(*second[:1], 2.0), jax.jit(_step_counting([]))(expected[0], 2.0))


def test_key_and_shapes_select_different_programs(folder):
    traces = []
    export_cache.cached_jit(_step_counting(traces), key=("a",))(_carry(), 2.0)
    export_cache.cached_jit(_step_counting(traces), key=("b",))(_carry(), 2.0)
    bigger = Carry(jnp.arange(5.0), jax.random.key(7))
    export_cache.cached_jit(_step_counting(traces), key=("a",))(bigger, 2.0)
    assert len(list(folder.glob("*.program"))) == 3
    assert len(traces) >= 3


def test_a_corrupt_file_is_traced_again_and_replaced(folder):
    export_cache.cached_jit(_step_counting([]), key=("c",))(_carry(), 2.0)
    (path,) = folder.glob("*.program")
    path.write_bytes(b"not a program")
    traces = []
    out = export_cache.cached_jit(_step_counting(traces), key=("c",))(_carry(), 2.0)
    assert len(traces) >= 1
    _same(out, jax.jit(_step_counting([]))(_carry(), 2.0))
    assert path.read_bytes() != b"not a program"


def test_off_and_unexportable_programs_fall_back_to_jit(folder, monkeypatch):
    def with_callback(x):
        jax.debug.callback(lambda v: None, x)
        return x * 2

    out = export_cache.cached_jit(with_callback, key=("cb",))(jnp.ones(2))
    np.testing.assert_array_equal(out, 2 * np.ones(2))
    assert not list(folder.glob("*.program"))
    monkeypatch.setattr(export_cache, "_programs_dir", lambda: None)
    out = export_cache.cached_jit(_step_counting([]), key=("off",))(_carry(), 2.0)
    _same(out, jax.jit(_step_counting([]))(_carry(), 2.0))
    assert not list(folder.glob("*.program"))


def test_compiler_options_are_part_of_the_program(folder):
    # As scorefn passes them: the CPU presets on the CPU backend, none elsewhere (a GPU's
    # compiler rejects the CPU's options), so there are two programs only on the CPU.
    options = compiler_options.cpu_options(compiler_options.FAST_COMPILE)
    traces = []
    fast = export_cache.cached_jit(_step_counting(traces), key=("o",), compiler_options=options)
    out = fast(_carry(), 2.0)
    default = export_cache.cached_jit(_step_counting(traces), key=("o",))(_carry(), 2.0)
    assert len(list(folder.glob("*.program"))) == (2 if options else 1)
    np.testing.assert_allclose(np.asarray(out[0].x), np.asarray(default[0].x), rtol=1e-6)
    _same(export_cache.cached_jit(_step_counting([]), key=("o",),
                                    compiler_options=options)(_carry(), 2.0), out)


def test_compiler_options_the_installed_xla_lacks_are_dropped():
    # XLA renames and removes its flags between jax releases: a preset naming one that is
    # gone must not fail every compile (jax 0.11 dropped xla_cpu_use_fusion_emitters).
    gone = {"xla_cpu_no_such_option_in_any_release": True}
    with pytest.raises(Exception, match="xla_cpu_no_such_option_in_any_release"):
        jax.jit(lambda x: x + 1, compiler_options=gone)(1.0)  # the twin: unfiltered, it fails
    options = compiler_options.cpu_options({**gone, **compiler_options.BACKEND_O2})
    # on another backend the CPU's presets are dropped whole
    assert options == (compiler_options.BACKEND_O2 if jax.default_backend() == "cpu" else None)
    assert float(jax.jit(lambda x: x + 1, compiler_options=options)(1.0)) == 2.0


def test_the_program_cache_never_unpickles(folder, tmp_path):
    """A cache file replaced by a crafted pickle is not read as one: the program is traced
    again, the file replaced, and the pickle's code never runs."""
    step = export_cache.cached_jit(lambda x: {"y": x * 2}, key=("pickle test",))
    np.testing.assert_array_equal(step(np.ones(2))["y"], 2 * np.ones(2))
    (path,) = folder.glob("*.program")
    marker = str(tmp_path / "code-ran")
    malicious_pickle(str(path), marker)
    again = export_cache.cached_jit(lambda x: {"y": x * 2}, key=("pickle test",))
    np.testing.assert_array_equal(again(np.ones(2))["y"], 2 * np.ones(2))
    assert not os.path.exists(marker)
    assert kind_of(str(path)) == "scorefn program"  # replaced by a data-only file


def test_the_digest_covers_every_module_of_the_package():
    # A program traced from scorefn.rl must not be reused after rl/ changes: the digest reads
    # the whole package, not only the folder the cache's own module lies in.
    import sys

    import scorefn.rl.training  # noqa: F401

    root = os.path.dirname(os.path.abspath(sys.modules["scorefn"].__file__))
    listed = set(export_cache.source_files())
    imported = {os.path.relpath(m.__file__, root) for name, m in list(sys.modules.items())
                if name.startswith("scorefn.") and getattr(m, "__file__", None)}
    assert {"__init__.py", "rl/training.py", "runs/export_cache.py"} <= listed
    assert imported <= listed
