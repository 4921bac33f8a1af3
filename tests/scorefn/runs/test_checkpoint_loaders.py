"""Every place scorefn reads a file a user may have been handed: a crafted pickle never runs
its code, damage is a clear error (exit 2 from the CLI), and a run killed with SIGKILL at
any moment, a save included, resumes from its last complete checkpoint."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from checkpoint_files import DAMAGE_MESSAGES, damaged_copies, malicious_pickle

from scorefn import es, rl, vi
from scorefn.runs import checkpoints
from scorefn.runs.checkpoints import CheckpointError


def _es_resume(path):
    es.minimize(es.sphere, np.ones(3), "snes", max_evaluations=200, checkpoint=path, resume=True)


def _es_restarts_resume(path):
    es.minimize(es.rastrigin, np.ones(3), "snes", restarts=2, max_evaluations=200,
                checkpoint=path, resume=True)


def _rl_load(path):
    rl.load_checkpoint(path)


def _rl_resume(path):
    rl.train("CartPole-v1", "a2c", seed=0, total_steps=256, progress=False, checkpoint=path,
             resume=True, num_envs=2, num_steps=8)


def _vi_resume(path):
    x, _ = vi.examples.mixture_data(num_points=10)
    vi.fit(vi.examples.gaussian_mixture, None, (x,), jax.random.key(0), steps=10, checkpoint=path,
           resume=True, progress=False)


def _discrete_vae_resume(path):
    from scorefn.vi import discrete_vae as dv

    images = np.zeros((8, dv.PIXELS), np.float32)
    dv.fit(dv.DiscreteVAE(latents=2), (images, images), jax.random.key(0), steps=2, batch_size=4,
           variance_samples=2, evaluation_samples=1, checkpoint=path, resume=True)


API_LOADERS = {"es.minimize": _es_resume, "es.minimize restarts": _es_restarts_resume,
               "rl.load_checkpoint": _rl_load, "rl.train": _rl_resume, "vi.fit": _vi_resume,
               "discrete_vae.fit": _discrete_vae_resume}

CLI_LOADERS = {
    "rl eval": ["rl", "eval", "--checkpoint", "{path}"],
    "rl train": ["rl", "train", "--total-steps", "256", "--resume", "--checkpoint", "{path}",
                 "--log-dir", "{folder}/logs"],
    "optimize": ["optimize", "--function", "sphere", "--dim", "3", "--max-evals", "200",
                 "--resume", "--checkpoint", "{path}"],
    "fit": ["fit", "--model", "gaussian_mixture", "--steps", "10", "--resume",
            "--checkpoint", "{path}"],
    "fit discrete VAE": ["fit", "--model", "discrete_vae_digits", "--steps", "10", "--resume",
                         "--checkpoint", "{path}"],
}


def _argv(template, path, folder):
    return [a.format(path=path, folder=folder) for a in template]


@pytest.mark.parametrize("name", sorted(API_LOADERS))
def test_a_crafted_pickle_never_runs_through_the_api(name, tmp_path):
    path, marker = str(tmp_path / "shared.ckpt"), str(tmp_path / "code-ran")
    malicious_pickle(path, marker)
    with pytest.raises(CheckpointError, match="is a pickle, which scorefn never loads"):
        API_LOADERS[name](path)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("name", sorted(CLI_LOADERS))
def test_a_crafted_pickle_never_runs_through_the_cli(name, tmp_path, monkeypatch, cli_error):
    monkeypatch.chdir(tmp_path)
    path, marker = str(tmp_path / "shared.ckpt"), str(tmp_path / "code-ran")
    malicious_pickle(path, marker)
    err = cli_error(_argv(CLI_LOADERS[name], path, tmp_path))
    assert f"{path} is a pickle, which scorefn never loads" in err
    assert not os.path.exists(marker)


def test_damaged_checkpoints_are_named_by_the_cli(tmp_path, cli_error):
    path = str(tmp_path / "run.ckpt")
    es.minimize(es.sphere, np.ones(3), "snes", max_evaluations=100, checkpoint=path)
    for name, damaged in damaged_copies(path, str(tmp_path)).items():
        err = cli_error(_argv(CLI_LOADERS["optimize"], damaged, tmp_path))
        assert damaged in err and DAMAGE_MESSAGES[name] in err, (name, err)
    # a whole checkpoint of another kind
    err = cli_error(["rl", "eval", "--checkpoint", path])
    assert "is a 'scorefn.es' checkpoint (version 4); expected a 'scorefn.rl'" in err
    # resuming nothing is an error, not a fresh run
    err = cli_error(_argv(CLI_LOADERS["optimize"], str(tmp_path / "missing.ckpt"), tmp_path))
    assert "resume: no checkpoint at" in err


# --- SIGKILL at any moment -------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    path, signal_file, when, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    real_replace, saves = os.replace, []

    def replace(src, dst):  # every checkpoint's rename
        if when == "during" and len(saves) + 1 == at:
            open(signal_file, "w").close()  # the new file is written, not yet renamed
            time.sleep(600)
        real_replace(src, dst)
        saves.append(dst)
        if when == "after" and len(saves) == at:
            open(signal_file, "w").close()  # killed while computing the next chunk
            time.sleep(600)

    os.replace = replace
    from scorefn import es
    es.minimize(es.rosenbrock, np.zeros(4), "snes", seed=1, max_evaluations=3000,
                generations_per_call=10, checkpoint=path)
""")


def _killed_run(tmp_path, when, at):
    path, signal_file = str(tmp_path / f"{when}{at}.ckpt"), str(tmp_path / f"{when}{at}.ready")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, path, signal_file, when, str(at)],
                             env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(signal_file):
            assert child.poll() is None, "the run ended before the planned kill"
            assert time.monotonic() < deadline, "the run never reached the planned kill"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return path


@pytest.mark.parametrize("when,at", [("after", 1), ("during", 3), ("after", 5)])
def test_a_run_killed_at_any_moment_resumes_from_its_last_complete_checkpoint(tmp_path, when, at):
    options = dict(seed=1, max_evaluations=3000, generations_per_call=10)
    whole = es.minimize(es.rosenbrock, np.zeros(4), "snes", **options)
    path = _killed_run(tmp_path, when, at)
    complete = at - 1 if when == "during" else at
    saved = checkpoints.load(path, kind="scorefn.es", version=4)
    generations = len(saved["records"])
    assert generations == 10 * complete  # the last complete save, whole and readable
    resumed = es.minimize(es.rosenbrock, np.zeros(4), "snes", checkpoint=path, resume=True,
                          **options)
    assert resumed.f == whole.f and np.array_equal(resumed.x, whole.x)
    assert resumed.history == whole.history and resumed.evaluations == whole.evaluations
    assert json.dumps(resumed.as_dict()["best_f"]) == json.dumps(whole.as_dict()["best_f"])
