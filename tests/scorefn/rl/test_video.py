"""rl.record_video: a trained policy rendered headless (MuJoCo through EGL) into a GIF."""

import imageio.v2 as imageio
import numpy as np
import pytest

from scorefn import rl
from scorefn.cli import main


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "run.ckpt")
    rl.train("InvertedPendulum-v5", "ppo", seed=0, total_steps=2048, eval_every=2048,
             eval_episodes=1, num_epochs=1, checkpoint=path, progress=False)
    return path


def test_the_video_shows_the_episode_evaluate_scores(pendulum, tmp_path):
    result = rl.load_checkpoint(pendulum)
    path = str(tmp_path / "policy.gif")
    returns = rl.record_video(result, path, episodes=1, width=64, height=64)
    # the same deterministic episode as evaluation's first (reset seed 0, frozen statistics)
    assert returns == [rl.evaluate(result, episodes=1)]
    frames = imageio.mimread(path)
    # the first frame, then one per step: a reward of 1 per step survived and 0 for the step
    # that falls (InvertedPendulum-v5), so a fallen episode of return R has R + 1 steps
    assert returns[0] < 1000 and len(frames) == int(returns[0]) + 2
    assert frames[0].shape == (64, 64, 3)
    assert np.std(frames[0]) > 1  # a picture, not a blank frame


def test_the_cli_writes_the_video_beside_the_evaluation(pendulum, tmp_path, capsys):
    path = str(tmp_path / "eval.gif")
    assert main(["rl", "eval", "--checkpoint", pendulum, "--episodes", "1", "--video", path]) == 0
    assert f"video: {path}" in capsys.readouterr().out
    assert len(imageio.mimread(path)) > 1


def test_unsupported_videos_are_refused(pendulum, tmp_path):
    result = rl.load_checkpoint(pendulum)
    with pytest.raises(ValueError, match=r"path must end in one of \('.gif', '.mp4'\)"):
        rl.record_video(result, str(tmp_path / "x.avi"))
    cartpole = rl.train("CartPole-v1", "ppo", total_steps=256, eval_every=256, num_epochs=1,
                        progress=False)
    with pytest.raises(ValueError, match="renders gymnasium environments; CartPole-v1 runs on gymnax"):
        rl.record_video(cartpole, str(tmp_path / "x.gif"))
