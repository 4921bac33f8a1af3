"""scorefn.runs: the driver every long run shares (checkpoints, settings, progress, metrics)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import runs
from scorefn.runs import checkpoints


def test_settings_check_names_what_changed_and_allows_what_may():
    recorded = {"lr": 0.1, "layers": [64, 64], "clip": math.nan, "key": [0, 1]}
    runs.refuse_changed_settings("run.ckpt", recorded, {"lr": 0.1, "layers": (64, 64),
                                                        "clip": math.nan, "key": [0, 1]})
    with pytest.raises(ValueError, match="run.ckpt records no settings, so a resume cannot"):
        runs.refuse_changed_settings("run.ckpt", None, {"lr": 0.2})
    with pytest.raises(ValueError, match=r"run.ckpt was written by a run with other settings "
                                         r"\(key \(the seed\), lr=0.1, now 0.2\); resume it with "
                                         r"the same ones \(steps may change\)"):
        runs.refuse_changed_settings("run.ckpt", recorded, {**recorded, "lr": 0.2, "key": [2, 3]},
                                      may_change="steps")


def test_run_saves_restores_and_refuses_other_settings(tmp_path):
    path = str(tmp_path / "run.ckpt")
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        runs.Run("test", 1, checkpoint=None, resume=True, settings={})
    with pytest.raises(checkpoints.CheckpointError, match="resume: no checkpoint at .*run.ckpt"):
        runs.Run("test", 1, checkpoint=path, resume=True, settings={"lr": 0.1})
    fresh = runs.Run("test", 1, checkpoint=path, resume=False, settings={"lr": 0.1})
    assert fresh.restored is None
    state = {"w": jnp.arange(3.0), "key": jax.random.key(7)}
    fresh.save(state=state, done=5)
    again = runs.Run("test", 1, checkpoint=path, resume=True, settings={"lr": 0.1})
    restored = checkpoints.restore(again.restored["state"])
    assert again.restored["done"] == 5
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert jnp.all(jax.random.key_data(restored["key"]) == jax.random.key_data(state["key"]))
    with pytest.raises(ValueError, match=r"other hyperparameters \(lr=0.1, now 0.3\)"):
        runs.Run("test", 1, checkpoint=path, resume=True, settings={"lr": 0.3},
                  what="hyperparameters")
    with pytest.raises(ValueError, match="is a 'test' checkpoint \\(version 1\\); expected an? "
                                         "'other' checkpoint"):
        runs.Run("other", 1, checkpoint=path, resume=True, settings={"lr": 0.1})


def test_a_fresh_run_never_overwrites_earlier_work(tmp_path):
    path, logs = str(tmp_path / "run.ckpt"), str(tmp_path / "logs")
    with runs.Run("test", 1, checkpoint=path, resume=False, settings={}, log_dir=logs) as run:
        run.log({"step": 1})
        run.save(done=1)
    before = open(path, "rb").read()
    message = r"run.ckpt holds an earlier run; resume it .*--resume.*--overwrite"
    with pytest.raises(ValueError, match=message):
        runs.Run("test", 1, checkpoint=path, resume=False, settings={}, log_dir=logs)
    assert open(path, "rb").read() == before
    # the metrics alone are earlier work too (a run without a checkpoint)
    with pytest.raises(ValueError, match=r"metrics.jsonl holds an earlier run"):
        runs.Run("test", 1, checkpoint=None, resume=False, settings={}, log_dir=logs)
    with runs.Run("test", 1, checkpoint=path, resume=False, settings={}, log_dir=logs,
                  overwrite=True) as run:
        run.log({"step": 7})
        run.save(done=7)
    assert checkpoints.load(path, kind="test", version=1)["done"] == 7


def test_run_writes_metrics_and_appends_on_resume(tmp_path):
    path, logs = str(tmp_path / "run.ckpt"), str(tmp_path / "logs")
    with runs.Run("test", 1, checkpoint=path, resume=False, settings={}, log_dir=logs) as run:
        run.log({"step": 1, "loss": 0.5})
        run.save(done=1)
    with runs.Run("test", 1, checkpoint=path, resume=True, settings={}, log_dir=logs) as run:
        run.log({"step": 2, "loss": 0.25})
    rows = [json.loads(line) for line in open(os.path.join(logs, "metrics.jsonl"))]
    assert rows == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    assert open(os.path.join(logs, "metrics.csv")).read().splitlines() == [
        "step,loss", "1,0.5", "2,0.25"]


def test_tree_digest_and_describe_identify_a_setting_by_what_it_is():
    a = {"x": np.arange(4.0), "y": (np.ones(2, np.float32),)}
    assert runs.tree_digest(a) == runs.tree_digest({"x": np.arange(4.0),
                                                      "y": (np.ones(2, np.float32),)})
    assert runs.tree_digest(a) != runs.tree_digest({"x": np.arange(4.0) + 1e-9,
                                                      "y": (np.ones(2, np.float32),)})
    assert runs.tree_digest(a) != runs.tree_digest({"x": np.arange(4.0),
                                                      "y": (np.ones(2, np.float64),)})
    assert " at 0x" not in runs.describe(lambda x: x)
