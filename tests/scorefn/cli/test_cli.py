"""The scorefn command."""

import json
import os
import re

import pytest

from scorefn.cli import build_parser, main


@pytest.mark.slow
def test_demo_runs_and_saves_the_plot(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--repeats", "50", "--sample-sizes", "10,40",
                 "--json"])
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert (tmp_path / "variance_vs_samples.png").stat().st_size > 10_000
    assert result["score_error"] < 1e-4
    assert "f(x) = x²" in result["tables"]
    assert "analytic vs autodiff" in out and "E[score] over 100,000 samples" in out
    assert "off-policy gradient of E[x²]" in out and "MIS gradient" in out
    mu, sigma = 0.5, 1.5
    assert result["natural_gradient"]["mu"] == pytest.approx(2 * mu * sigma**2, rel=1e-4)
    assert result["natural_gradient"]["sigma"] == pytest.approx(sigma**3, rel=1e-4)
    assert 0 < result["off_policy"]["ess"] <= 20_000
    for name, (mean, se) in result["mis"].items():  # printed checks carry standard errors
        assert abs(mean - {"mu": 2 * mu, "sigma": 2 * sigma}[name]) < 4 * se


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train"])
    assert "invalid choice" in capsys.readouterr().err


def test_optimize_json_line(tmp_path, capsys):
    plot = tmp_path / "conv.png"
    assert main(["optimize", "--function", "sphere", "--dim", "5", "--strategy", "snes",
                 "--json", "--plot", str(plot)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["best_f"] < 1e-8 and result["evaluations"] > 0 and result["wall_s"] > 0
    assert result["stop_reason"] == "target_f"
    assert plot.stat().st_size > 5_000


def test_optimize_restarts_solve_rastrigin(capsys):
    # Without restarts xNES stalls in a local minimum here (measured: stops at f = 2.98).
    # With them it reaches 0 after 4 restarts (130k evaluations); without the restarts'
    # default stagnation stop, its second run circles a local minimum at float32 resolution
    # until the budget is spent.
    assert main(["optimize", "--function", "rastrigin", "--dim", "10", "--sigma0", "2",
                 "--restarts", "8", "--seed", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["success"] and "restart" in result["stop_reason"], result


def test_optimize_rejects_a_mismatched_strategy(cli_error):
    assert "onemax is binary" in cli_error(["optimize", "--function", "onemax",
                                            "--strategy", "xnes"])
    with pytest.raises(SystemExit):  # an argparse choice: lists the built-in functions
        main(["optimize", "--function", "griewank"])
    assert ("sphere is continuous: use a continuous strategy (snes, xnes, openai_es)"
            in cli_error(["optimize", "--function", "sphere", "--strategy", "categorical"]))


def test_optimize_categorical_on_a_binary_function(capsys):
    assert main(["optimize", "--function", "onemax", "--dim", "20", "--strategy", "categorical",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["strategy"] == "categorical" and out["best_f"] == 0.0 and out["success"]


def test_fit_json_line_and_resume(tmp_path, capsys):
    plot, ckpt = tmp_path / "elbo.png", tmp_path / "run.ckpt"
    args = ["fit", "--model", "logistic_breast_cancer", "--estimator", "score_rb", "--samples", "8",
            "--plot", str(plot), "--checkpoint", str(ckpt), "--json"]
    assert main([*args, "--steps", "200"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["steps"] == 200 and first["baseline"] == "leave_one_out"
    assert main([*args, "--steps", "400", "--resume"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 400 and result["wall_s"] > 0
    assert result["elbo"] > first["elbo"]  # resumed, and still rising
    assert plot.stat().st_size > 10_000


def test_fit_rejects_unknown_models(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model", "mnist"])
    assert "invalid choice" in capsys.readouterr().err


def test_rl_train_json_then_eval_the_checkpoint(tmp_path, capsys):
    log_dir = tmp_path / "run"
    assert main(["rl", "train", "--env", "CartPole-v1", "--algo", "ppo", "--seed", "0",
                 "--total-steps", "2048", "--eval-every", "1024", "--log-dir", str(log_dir),
                 "--set", "num_epochs=2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"eval_mean", "env_steps", "wall_s", "solved_at_steps"} <= set(result)
    assert result["env_steps"] == 2048 and result["solved_at_steps"] is None
    assert (log_dir / "learning_curve.png").exists() and (log_dir / "metrics.csv").exists()
    assert main(["rl", "eval", "--checkpoint", str(log_dir / "checkpoint.ckpt"), "--json"]) == 0
    evaluation = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluation["env_steps"] == 2048 and evaluation["episodes"] == 20


def test_rl_train_unknown_env_lists_known_ones(cli_error):
    assert re.search("unknown environment 'Nope-v0'.*CartPole-v1",
                     cli_error(["rl", "train", "--env", "Nope-v0", "--json"]), re.S)


@pytest.mark.parametrize("argv,message", [
    (["rl", "train", "--total-steps", "0"], "--total-steps: expected a positive int, got 0"),
    (["fit", "--model", "gaussian_mixture", "--steps", "0"], "--steps: expected a positive int"),
    (["optimize", "--function", "sphere", "--dim", "0"], "--dim: expected a positive int"),
    (["optimize", "--function", "sphere", "--sigma0", "-1"], "--sigma0: expected a positive"),
    (["rl", "eval", "--checkpoint", "/no/such/file.ckpt"], "--checkpoint: no such file"),
    (["optimize", "--function", "maxcutt"], "invalid choice: 'maxcutt'"),
])
def test_out_of_range_numbers_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_out_of_range_hyperparameters_and_a_diverged_run_are_error_lines(tmp_path, capsys,
                                                                          cli_error):
    """A hyperparameter out of its range is a usage error naming it (exit 2); a run that
    diverges ends with its message on one line and exit status 1, not a traceback."""
    assert "gamma must be a finite number in [0, 1], got 1.5" in cli_error(
        ["rl", "train", "--set", "gamma=1.5", "--total-steps", "1000", "--json"])
    capsys.readouterr()
    assert main(["rl", "train", "--env", "CartPole-v1", "--algo", "a2c", "--total-steps", "800",
                 "--log-dir", str(tmp_path / "run"), "--set", "learning_rate=1e38",
                 "--json"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"^scorefn rl train: error: a2c on CartPole-v1: a loss or the parameters "
                     r"became NaN/inf after \d+ env steps", err, re.M)


def test_version_and_hyperparameter_types(capsys, cli_error):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip().startswith("scorefn 0.")
    assert "hyperparameter num_envs of ppo must be an int" in cli_error(
        ["rl", "train", "--set", "num_envs=abc", "--total-steps", "1000", "--json"])


def test_optimize_bounds_checkpoint_and_resume(tmp_path, capsys, cli_error):
    path = str(tmp_path / "run.ckpt")
    common = ["optimize", "--function", "rastrigin", "--dim", "3", "--bounds=-2,2", "--json",
              "--checkpoint", path]
    assert main(common + ["--max-evals", "300"]) == 0
    assert main(common + ["--max-evals", "600", "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["optimize", "--function", "rastrigin", "--dim", "3", "--bounds=-2,2", "--json",
                 "--max-evals", "600"]) == 0
    whole = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["best_f"] == whole["best_f"] and resumed["evaluations"] == whole["evaluations"]
    assert re.search("other settings.*sigma0", cli_error(
        common + ["--max-evals", "600", "--resume", "--sigma0", "0.9"]))


def test_rl_train_gymnasium_gets_its_own_folder_and_checkpoints(tmp_path, monkeypatch, capsys):
    """CartPole on gymnasium does not write into the gymnax run's default folder, and its
    run checkpoints (the last and the best) like a gymnax run's."""
    monkeypatch.chdir(tmp_path)
    assert main(["rl", "train", "--env", "CartPole-v1", "--backend", "gymnasium",
                 "--total-steps", "1024", "--eval-every", "1024", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["log_dir"] == os.path.join("runs", "CartPole-v1_ppo_0_gymnasium")
    assert os.path.exists(out["checkpoint"]) and os.path.exists(out["best_checkpoint"])


def test_runs_never_overwrite_and_an_interrupted_run_says_how_to_resume(
        tmp_path, capsys, cli_error, monkeypatch):
    from scorefn.runs import checkpoints

    path = str(tmp_path / "run.ckpt")
    argv = ["optimize", "--function", "rosenbrock", "--dim", "4", "--max-evals", "4000",
            "--target", "0", "--checkpoint", path]
    real_save, saves = checkpoints.save, []

    def interrupted_save(*args, **kwargs):  # Ctrl-C right after the second save
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save", interrupted_save)
    assert main(argv) == 130
    monkeypatch.setattr(checkpoints, "save", real_save)
    err = capsys.readouterr().err
    command = f"scorefn optimize --function rosenbrock --dim 4 --max-evals 4000 --target 0 " \
              f"--checkpoint {path} --resume"
    assert f"interrupted; the last checkpoint is {path}. Resume with:\n  {command}" in err
    before = open(path, "rb").read()
    assert "holds an earlier run; resume it (resume=True, --resume), start over in its place " \
           "(overwrite=True, --overwrite)" in cli_error(argv)
    assert open(path, "rb").read() == before  # refused, untouched
    assert main(command.split()[1:]) == 0
    assert "resuming " + path + " from evaluation 800 of 4,000" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--json"]) == 0


def test_help_shows_every_default(capsys):
    for argv, defaults in ((["rl", "train"], ["CartPole-v1", "(default: ppo)", "(default: 0)",
                                             "per algorithm and env", "(default: auto)"]),
                           (["optimize"], ["(default: 200000)", "(default: 0.5)",
                                           "(default: jax)"]),
                           (["fit"], ["(default: mixed)", "(default: 3000)"])):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        for default in defaults:
            assert default in out, (argv, default)


def test_rl_train_json_reports_every_seed(tmp_path, capsys):
    assert main(["rl", "train", "--seeds", "3,1", "--total-steps", "1024", "--eval-every", "512",
                 "--log-dir", str(tmp_path), "--set", "num_epochs=1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["seeds"] == [3, 1] and len(out["eval_mean"]) == 2
    assert len(out["solved_at_steps"]) == 2 and len(out["solved_wall_s"]) == 2
    history = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert out["eval_mean"] == history[-1]["eval_mean"]  # in the order of --seeds
