"""scorefn.runs.checkpoints: data-only files, checked before they are read, damage named."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from checkpoint_files import DAMAGE_MESSAGES, damaged_copies, malicious_pickle

from scorefn.runs import checkpoints
from scorefn.runs.checkpoints import CheckpointError


def _payload():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3, jnp.float32)}
    return {
        "params": params,
        "opt_state": optax.adam(1e-3).init(params),  # NamedTuples: restored into a template
        "key": jax.random.key(3),
        "keys": jax.random.split(jax.random.key(4), 5),
        "x64": np.linspace(0, 1, 7),
        "ints": np.arange(4, dtype=np.int8),
        "flag": np.bool_(True),
        "scalar": np.float32(2.5),
        "records": [(100, 1.5, math.inf, math.nan)],
        "settings": {"hidden": (64, 64), "lr": 3e-4, "name": "ppo", "clip": None},
        "empty": [],
    }


def _same_bits(a, b):
    if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        assert jax.random.key_impl(a) == jax.random.key_impl(b)
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_round_trip_is_bit_for_bit(tmp_path):
    path = str(tmp_path / "run.ckpt")
    payload = _payload()
    checkpoints.save(path, payload, kind="test", version=3)
    loaded = checkpoints.load(path, kind="test", version=3)
    assert loaded["records"] == [(100, 1.5, math.inf, loaded["records"][0][3])]
    assert math.isnan(loaded["records"][0][3])
    assert loaded["settings"] == payload["settings"]  # tuples stay tuples
    assert loaded["empty"] == []
    assert isinstance(loaded["scalar"], np.float32) and loaded["scalar"] == np.float32(2.5)
    restored = checkpoints.restore(loaded["opt_state"], like=payload["opt_state"])
    assert jax.tree.structure(restored) == jax.tree.structure(payload["opt_state"])
    for name in ("params", "key", "keys", "ints", "flag"):
        jax.tree.map(_same_bits, checkpoints.restore(loaded[name]), payload[name])
    _same_bits(loaded["x64"], payload["x64"])  # numpy as written (float64 with x64 off too)
    jax.tree.map(_same_bits, restored, payload["opt_state"])
    assert checkpoints.read_header(path)["kind"] == "test"


def test_restore_checks_the_template(tmp_path):
    path = str(tmp_path / "run.ckpt")
    state = optax.adam(1e-3).init({"w": jnp.zeros(3)})
    checkpoints.save(path, {"state": state}, kind="test", version=1)
    stored = checkpoints.load(path, kind="test", version=1)["state"]
    with pytest.raises(ValueError, match="restore it with like="):
        checkpoints.restore(stored)
    with pytest.raises(CheckpointError, match=r"array 1 has shape \(3,\) .* where this run has "
                                              r"\(4,\)"):
        checkpoints.restore(stored, like=optax.adam(1e-3).init({"w": jnp.zeros(4)}))
    with pytest.raises(CheckpointError, match="holds 3 arrays where this run has 5"):
        checkpoints.restore(stored, like=optax.adam(1e-3).init({"w": jnp.zeros(3),
                                                                "v": jnp.zeros(1)}))
    with pytest.raises(CheckpointError, match="dtype float32 where this run has .* float16"):
        checkpoints.restore(stored, like=optax.adam(1e-3).init({"w": jnp.zeros(3, jnp.float16)}))


def test_what_cannot_be_stored_is_named():
    with pytest.raises(TypeError, match=r"payload\['f'\]: a checkpoint cannot store a function"):
        checkpoints.save("unused.ckpt", {"f": lambda x: x}, kind="test", version=1)
    with pytest.raises(TypeError, match="str keys only"):
        checkpoints.save("unused.ckpt", {"d": {1: 2}}, kind="test", version=1)
    with pytest.raises(TypeError, match="array of Python objects"):
        checkpoints.save("unused.ckpt", {"a": np.array([{}], object)}, kind="test", version=1)
    assert not os.path.exists("unused.ckpt")


def test_kind_and_version_are_checked_first(tmp_path):
    path = str(tmp_path / "run.ckpt")
    checkpoints.save(path, {"x": 1}, kind="scorefn.es", version=4)
    with pytest.raises(CheckpointError, match=r"is a 'scorefn.es' checkpoint \(version 4\); "
                                              r"expected a 'scorefn.rl' checkpoint \(version 4\)"):
        checkpoints.load(path, kind="scorefn.rl", version=4)
    with pytest.raises(CheckpointError, match=r"\(version 4\); expected a 'scorefn.es' "
                                              r"checkpoint \(version 5\)"):
        checkpoints.load(path, kind="scorefn.es", version=5)


def test_damage_is_named_not_a_traceback(tmp_path):
    path = str(tmp_path / "run.ckpt")
    checkpoints.save(path, _payload(), kind="test", version=1)
    copies = damaged_copies(path, str(tmp_path))
    for name, damaged in copies.items():
        with pytest.raises(CheckpointError, match=DAMAGE_MESSAGES[name]) as error:
            checkpoints.load(damaged, kind="test", version=1)
        assert os.path.basename(damaged) in str(error.value)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoints.load(str(tmp_path / "missing.ckpt"), kind="test", version=1)
    # a flipped byte is told from a cut: the checksum, not the length
    assert "truncated" not in DAMAGE_MESSAGES["corrupted"]


def test_a_pickle_is_refused_without_running_it(tmp_path):
    path, marker = str(tmp_path / "evil.pkl"), str(tmp_path / "ran")
    malicious_pickle(path, marker)
    with pytest.raises(CheckpointError, match="is a pickle, which scorefn never loads"):
        checkpoints.load(path, kind="scorefn.rl", version=4)
    with pytest.raises(CheckpointError, match="is a pickle"):
        checkpoints.read_header(path)
    assert not os.path.exists(marker)


def test_writes_are_atomic_and_keep_the_old_file_until_the_new_is_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "run.ckpt")
    checkpoints.save(path, {"step": 1}, kind="test", version=1)
    before = open(path, "rb").read()

    def dies_in_fsync(_fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", dies_in_fsync)
    with pytest.raises(OSError, match="disk gone"):
        checkpoints.save(path, {"step": 2}, kind="test", version=1)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["run.ckpt"]  # no temporary left behind
    checkpoints.copy(path, str(tmp_path / "best.ckpt"))
    assert checkpoints.load(str(tmp_path / "best.ckpt"), kind="test", version=1) == {"step": 1}
