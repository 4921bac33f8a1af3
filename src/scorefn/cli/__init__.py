"""The ``scorefn`` command.

Every command starts on the base install; one that needs an extra (``rl``: the ``rl``
extra; ``fit``'s worked models: the ``vi`` extra) says which. Errors a user can fix (bad
options, a missing or damaged checkpoint, a missing extra) end in one line on stderr and
exit status 2, as argparse's own do.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from scorefn.cli.processes import add_options as add_process_options
from scorefn.cli.processes import joined as joined_processes
from scorefn.cli.processes import leave as leave_processes
from scorefn.cli.processes import start as start_processes


class CommandError(Exception):
    """An error in how a command was called: one line on stderr, exit status 2."""


def _demo(args: argparse.Namespace) -> int:
    from scorefn.cli.demo import run_demo

    sizes = tuple(int(s) for s in args.sample_sizes.split(","))
    result = run_demo(args.out, seed=args.seed, num_samples=args.num_samples,
                      num_repeats=args.repeats, sample_sizes=sizes)
    if args.json:
        keys = ("plot", "score_error", "tables", "off_policy", "mis", "natural_gradient")
        print(json.dumps({k: result[k] for k in keys}))
    return 0


DISCRETE_STRATEGIES = ("bernoulli", "categorical")


def _optimize(args: argparse.Namespace) -> int:
    import numpy as np

    from scorefn import es

    bounds = None
    if args.bounds is not None:
        try:
            low, high = (float(b) for b in args.bounds.split(","))
        except ValueError:
            raise CommandError(f"--bounds takes LOW,HIGH; got {args.bounds!r}") from None
        bounds = (low, high)
    f, binary = es.FUNCTIONS[args.function]
    strategy = args.strategy or ("bernoulli" if binary else "xnes")
    # categorical with two categories searches {0, 1}^d, as bernoulli does
    if binary != (strategy in DISCRETE_STRATEGIES):
        raise CommandError(
            f"{args.function} is {'binary' if binary else 'continuous'}: use "
            + ("--strategy bernoulli or categorical" if binary else
               "a continuous strategy (" + ", ".join(
                   s for s in es.STRATEGIES if s not in DISCRETE_STRATEGIES) + ")"))
    if binary:
        x0 = np.full(args.dim, 0.5)
    else:
        x0 = np.random.default_rng(args.seed).uniform(-3, 3, args.dim)
        if bounds is not None:  # the start inside the box
            x0 = np.clip(x0, *(b + 1e-3 * (bounds[1] - bounds[0]) * s
                               for b, s in zip(bounds, (1, -1))))
    target = args.target if args.target is not None else (0.0 if binary else 1e-8)
    try:
        result = es.minimize(f, x0, strategy, sigma0=args.sigma0, seed=args.seed,
                             max_evaluations=args.max_evals, target_f=target,
                             progress=not args.json, plot=args.plot, restarts=args.restarts,
                             bounds=bounds, evaluator=args.evaluator, workers=args.workers,
                             devices=args.devices, checkpoint=args.checkpoint,
                             resume=args.resume,
                             overwrite=args.overwrite)
    except (ValueError, TypeError) as error:
        raise CommandError(str(error)) from None
    if args.json:
        out = result.as_dict()
        out.pop("best_x")
        print(json.dumps({"function": args.function, "dim": args.dim, "strategy": strategy,
                          "seed": args.seed, **out}))
    else:
        print(f"{strategy} on {args.function} (d = {args.dim}): best f = {result.f:.3e} after "
              f"{result.evaluations:,} evaluations in {result.wall_s:.2f} s ({result.stop_reason})")
        if args.plot:
            print(f"saved {args.plot}")
    return 0


VI_MODELS = ("logistic_breast_cancer", "gaussian_mixture", "discrete_vae_digits")
BASELINES = ("auto", "none", "ema", "leave_one_out", "optimal")


def _fit(args: argparse.Namespace) -> int:
    import jax
    import optax

    from scorefn import baselines, vi

    if args.model == "discrete_vae_digits":
        return _fit_discrete_vae(args)
    from scorefn.vi.objectives import OBJECTIVES

    args.estimator = args.estimator or "mixed"
    if args.estimator not in OBJECTIVES:
        raise CommandError(f"--estimator {args.estimator} is not one of "
                           f"{', '.join(OBJECTIVES)} for --model {args.model}")
    args.lr = 0.01 if args.lr is None else args.lr
    if args.model == "logistic_breast_cancer":
        model, data = vi.examples.logistic_regression, vi.examples.breast_cancer()
    else:
        model, data = vi.examples.gaussian_mixture, (vi.examples.mixture_data(args.seed)[0],)
    name = args.baseline
    if name == "auto":  # no baseline for pathwise-only fits; else LOO when K ≥ 2, EMA for K = 1
        name = "none" if args.estimator in ("pathwise", "iwae", "vimco") else (
            "leave_one_out" if args.samples >= 2 else "ema")
    baseline = {"none": None, "ema": baselines.ema(0.9), "leave_one_out": baselines.leave_one_out(),
                "optimal": baselines.optimal()}[name]
    plot = args.plot or f"elbo_{args.model}_{args.estimator}.png"
    try:
        result = vi.fit(model, args.guide, data, jax.random.key(args.seed),
                        estimator=args.estimator, optimizer=optax.adam(args.lr), steps=args.steps,
                        num_samples=args.samples, baseline=baseline, checkpoint=args.checkpoint,
                        resume=args.resume, overwrite=args.overwrite, progress=not args.json,
                        plot=plot, devices=args.devices)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps({"model": args.model, "seed": args.seed, "baseline": name, "plot": plot,
                          **result.as_dict()}))
    else:
        print(f"{args.model}, {args.estimator} (K = {args.samples}, baseline {name}): ELBO "
              f"{result.final_elbo:.2f} (mean of the last 100 steps) after {result.steps:,} steps "
              f"in {result.wall_s:.2f} s; saved {plot}")
    return 0


def _fit_discrete_vae(args: argparse.Namespace) -> int:
    import jax

    from scorefn.vi import discrete_vae

    estimator = args.estimator or "disarm"
    if estimator not in discrete_vae.ESTIMATORS:
        raise CommandError(f"--estimator {estimator} is not one of "
                           f"{', '.join(discrete_vae.ESTIMATORS)} for --model discrete_vae_digits")
    if args.baseline not in ("auto", "ema"):
        raise CommandError("--model discrete_vae_digits sets its baselines per estimator "
                           "(score: ema, rloo: leave_one_out); leave --baseline out")
    model = discrete_vae.DiscreteVAE(latents=args.latents, hidden=args.hidden)
    plot = args.plot or f"elbo_{args.model}_{estimator}.png"
    try:
        result = discrete_vae.fit(
            model, discrete_vae.binarized_digits(), jax.random.key(args.seed),
            estimator=estimator, num_particles=args.samples, steps=args.steps,
            learning_rate=1e-3 if args.lr is None else args.lr, checkpoint=args.checkpoint,
            resume=args.resume, overwrite=args.overwrite, progress=not args.json,
            devices=args.devices)
    except ValueError as error:
        raise CommandError(str(error)) from None
    result.plot(plot)
    if args.json:
        print(json.dumps({"model": args.model, "seed": args.seed, "latents": args.latents,
                          "hidden": args.hidden, "plot": plot, **result.as_dict()}))
    else:
        print(f"{args.model}, {estimator} (K = {args.samples}): train ELBO {result.final_elbo:.2f} "
              f"(mean of the last 100 steps), test ELBO {result.test['elbo']:.2f}, test "
              f"log-likelihood {result.test['log_likelihood']:.2f} (importance-sampled, S = 100) "
              f"per image after {result.steps:,} steps in {result.wall_s:.1f} s; saved {plot}")
    return 0


def _int_at_least(minimum: int):
    """An argparse type: an int >= ``minimum``, else argparse's error naming the option."""
    wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


_positive_int, _nonnegative_int = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def _existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _hyperparameters(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CommandError(f"--set takes name=value pairs; got {pair!r}")
        name, text = pair.split("=", 1)
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
        if isinstance(out[name], list):
            out[name] = tuple(out[name])
    return out


def _rl_train(args: argparse.Namespace) -> int:
    import numpy as np

    from scorefn import rl

    try:
        backend = rl.resolve_backend(args.env, args.backend)
    except ValueError as error:
        raise CommandError(str(error)) from None
    # a gymnasium run of an env gymnax also has gets its own folder
    suffix = "_gymnasium" if backend == "gymnasium" and args.env in rl.known_envs()["gymnax"] else ""
    log_dir = args.log_dir or os.path.join("runs", f"{args.env}_{args.algo}_{args.seed}{suffix}")
    args.checkpoint = args.checkpoint or os.path.join(log_dir, "checkpoint.ckpt")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise CommandError(f"--seeds takes comma-separated ints; got {args.seeds!r}") from None
    try:
        result = rl.train(args.env, args.algo, args.seed, args.total_steps, seeds=seeds,
                          backend=args.backend, eval_every=args.eval_every, log_dir=log_dir,
                          checkpoint=args.checkpoint, resume=args.resume, overwrite=args.overwrite,
                          stop_when_solved=args.stop_when_solved, progress=not args.json,
                          devices=args.devices, vectorization_mode=args.vectorization_mode,
                          workers=args.workers, **_hyperparameters(args.set))
    except ValueError as error:
        raise CommandError(str(error)) from None
    checkpoint = args.checkpoint
    out = {"env": args.env, "algo": args.algo, "seed": args.seed, "eval_mean": result.eval_mean,
           "env_steps": result.env_steps, "wall_s": result.wall_s,
           "solved_at_steps": result.solved_at_steps(), "solved_wall_s": result.solved_wall_s(),
           "log_dir": log_dir, "checkpoint": checkpoint,
           "best_checkpoint": rl.best_checkpoint_path(checkpoint)}
    if seeds is not None:  # every seed's figures, in the order of --seeds
        indices = range(len(seeds))
        out.update(seeds=seeds, seed=None,
                   eval_mean=[float(x) for x in np.atleast_1d(result.history[-1]["eval_mean"])],
                   solved_at_steps=[result.solved_at_steps(i) for i in indices],
                   solved_wall_s=[result.solved_wall_s(i) for i in indices])
    if args.json:
        print(json.dumps(out))
    else:
        solved = result.solved_at_steps()
        print(f"{args.algo} on {args.env}: final evaluation {result.eval_mean:.1f}"
              + (" (mean over seeds)" if seeds is not None else "")
              + f" after {result.env_steps:,} env steps, {result.wall_s:.1f} s of training"
              + (f"; solved at {solved:,} steps" if solved and seeds is None else "")
              + f". Logs in {log_dir}")
    return 0


def _rl_eval(args: argparse.Namespace) -> int:
    from scorefn import rl

    try:
        result = rl.load_checkpoint(args.checkpoint, args.seed_index)
        mean = rl.evaluate(result, episodes=args.episodes, seed=args.seed,
                           backend=args.backend)
        if args.video:
            rl.record_video(result, args.video, seed=args.seed)
    except (ValueError, ImportError, RuntimeError) as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps({"env": result.env_id, "algo": result.algo, "eval_mean": mean,
                          "episodes": args.episodes, "env_steps": result.env_steps}))
    else:
        print(f"{result.algo} on {result.env_id} ({result.env_steps:,} env steps): mean return "
              f"{mean:.1f} over {args.episodes} deterministic episodes")
        if args.video:
            print(f"video: {args.video}")
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (argparse's ArgumentDefaultsHelpFormatter
    also prints "default: None" and the defaults of flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "default" in text or action.default is None
                or action.default is False or action.default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def _run_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help=f"checkpoint file, {what} (data only; default: none)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from --checkpoint (an error if it does not exist)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in place of an existing checkpoint (a fresh run "
                             "refuses one otherwise)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorefn",
        description="Score-function (REINFORCE) gradient estimation on JAX.",
        formatter_class=_HelpFormatter,
    )
    from scorefn import __version__

    parser.add_argument("--version", action="version", version=f"scorefn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group, name: str, **kwargs) -> argparse.ArgumentParser:
        return group.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

    demo = command(commands, "demo", help="the log-derivative trick on a Gaussian: scores, "
                                          "estimators, variance plot (base install)")
    demo.add_argument("--out", default="scorefn-demo", help="folder for the PNG")
    demo.add_argument("--seed", type=int, default=0, help="the PRNG seed")
    demo.add_argument("--num-samples", type=_positive_int, default=100,
                      help="samples per estimate in the tables")
    demo.add_argument("--repeats", type=_positive_int, default=400,
                      help="independent estimates per estimator")
    demo.add_argument("--sample-sizes", default="10,30,100,300,1000",
                      help="comma-separated N for the variance plot")
    demo.add_argument("--json", action="store_true", help="end with one JSON line of results")
    demo.set_defaults(run=_demo)

    optimize = command(commands, "optimize", help="minimise a standard test function with a "
                                                  "search-gradient strategy (base install)")
    from scorefn.es.functions import FUNCTIONS
    from scorefn.es.minimize import EVALUATORS, STRATEGIES

    optimize.add_argument("--function", required=True, choices=sorted(FUNCTIONS),
                          help="a built-in test function (onemax and maxcut are binary)")
    optimize.add_argument("--dim", type=_positive_int, default=10, help="the dimension d")
    optimize.add_argument("--strategy", choices=list(STRATEGIES), default=None,
                          help="default: xnes (bernoulli for the binary functions; categorical "
                               "searches them with two categories per position)")
    optimize.add_argument("--seed", type=int, default=0, help="the PRNG seed (and x0's)")
    optimize.add_argument("--sigma0", type=_positive_float, default=0.5,
                          help="the initial search scale")
    optimize.add_argument("--max-evals", type=_positive_int, default=200_000,
                          help="the budget of evaluations of f")
    optimize.add_argument("--restarts", type=_nonnegative_int, default=0,
                          help="IPOP restarts with a doubled population when a run stalls "
                               "(multimodal functions such as rastrigin)")
    optimize.add_argument("--target", type=float, default=None,
                          help="stop at f <= target (default 1e-8; 0 for onemax)")
    optimize.add_argument("--bounds", default=None, metavar="LOW,HIGH",
                          help="keep the search in the box [LOW, HIGH]^d (continuous functions; "
                               "write --bounds=-5,5 when LOW is negative; default: none)")
    optimize.add_argument("--evaluator", choices=EVALUATORS, default="jax",
                          help="where f is evaluated")
    optimize.add_argument("--workers", type=_positive_int, default=None,
                          help="processes or Ray CPUs for --evaluator processes/ray "
                               "(default: the CPU count)")
    optimize.add_argument("--devices", type=_positive_int, default=None,
                          help="split each population across this many JAX devices "
                               "(--evaluator jax; default: one)")
    _run_options(optimize, "written as it runs")
    add_process_options(optimize, _positive_int)
    optimize.add_argument("--plot", default=None, help="save a convergence PNG here "
                                                       "(default: none)")
    optimize.add_argument("--json", action="store_true", help="end with one JSON line")
    optimize.set_defaults(run=_optimize)

    from scorefn.vi.objectives import OBJECTIVES

    try:
        from scorefn.vi.discrete_vae import ESTIMATORS as DISCRETE_VAE_ESTIMATORS

        discrete = f"{', '.join(DISCRETE_VAE_ESTIMATORS)} (default: disarm)"
    except ImportError:  # without the vi extra; fit says so when it runs
        discrete = "see its module (needs pip install 'scorefn[vi]')"
    fit = command(commands, "fit", help="variational inference on a worked model (the vi "
                                        "extra: pip install 'scorefn[vi]')")
    fit.add_argument("--model", required=True, choices=VI_MODELS, help="the worked model")
    fit.add_argument("--estimator", default=None,
                     help=f"ELBO gradient estimator: {', '.join(OBJECTIVES)} (default: mixed); "
                          f"for discrete_vae_digits, {discrete}")
    fit.add_argument("--guide", choices=["mean_field", "full_rank"], default="mean_field",
                     help="the variational family")
    fit.add_argument("--steps", type=_positive_int, default=3000, help="optimisation steps")
    fit.add_argument("--samples", type=_positive_int, default=1, help="K, guide samples per step")
    fit.add_argument("--baseline", choices=BASELINES, default="auto",
                     help="for score-function blocks (auto: leave_one_out if K >= 2, else ema)")
    fit.add_argument("--lr", type=_positive_float, default=None,
                     help="Adam's learning rate (default 0.01; 0.001 for discrete_vae_digits)")
    fit.add_argument("--latents", type=_positive_int, default=32,
                     help="discrete_vae_digits: Bernoulli latents")
    fit.add_argument("--hidden", type=_nonnegative_int, default=0,
                     help="discrete_vae_digits: units of the encoder's and decoder's hidden layer "
                          "(0: linear)")
    fit.add_argument("--seed", type=int, default=0, help="the PRNG seed")
    fit.add_argument("--devices", type=_positive_int, default=None,
                     help="split the data (discrete_vae_digits: each minibatch) across this many "
                          "JAX devices (default: one)")
    fit.add_argument("--plot", default=None, help="ELBO-curve PNG (default: elbo_<model>_<estimator>.png)")
    _run_options(fit, "written every 100 steps")
    add_process_options(fit, _positive_int)
    fit.add_argument("--json", action="store_true", help="end with one JSON line")
    fit.set_defaults(run=_fit)

    rl_parser = command(commands, "rl", help="policy-gradient reinforcement learning (the rl "
                                             "extra: pip install 'scorefn[rl]')")
    rl_commands = rl_parser.add_subparsers(dest="rl_command", required=True, metavar="COMMAND")
    train = command(rl_commands, "train", help="train a policy")
    train.add_argument("--env", default="CartPole-v1", help="a gymnax, gymnasium or brax id (brax:hopper)")
    train.add_argument("--algo", default="ppo", help="reinforce, a2c, ppo, trpo or npg")
    train.add_argument("--seed", type=int, default=0, help="the seed of one run")
    train.add_argument("--seeds", default=None,
                       help="comma-separated seeds trained at once (vmap; gymnax, brax); --json "
                            "then reports every seed (default: --seed alone)")
    train.add_argument("--devices", type=_positive_int, default=None,
                       help="split the seeds (or one seed's environments) across this many JAX "
                            "devices (gymnax, brax; default: one)")
    train.add_argument("--vectorization-mode", choices=["sync", "async", "ray"], default="sync",
                       help="gymnasium's vector env: sync (in turn, in this process), async (a "
                            "subprocess per environment) or ray (Ray actors)")
    train.add_argument("--workers", type=_positive_int, default=None,
                       help="Ray actors for --vectorization-mode ray (default: one per "
                            "environment)")
    train.add_argument("--total-steps", type=_positive_int, default=None,
                       help="env steps (default: per algorithm and env, scorefn.rl.defaults)")
    train.add_argument("--backend", choices=["auto", "gymnax", "gymnasium", "brax"], default="auto",
                       help="auto: brax for brax: ids, gymnax where it has the env")
    train.add_argument("--eval-every", type=_positive_int, default=None,
                       help="env steps between evaluations (default: total / 20)")
    train.add_argument("--stop-when-solved", action="store_true",
                       help="stop once every seed reaches the env's threshold")
    train.add_argument("--log-dir", default=None, help="default: runs/<env>_<algo>_<seed>")
    train.add_argument("--checkpoint", default=None, help="default: <log-dir>/checkpoint.ckpt")
    train.add_argument("--resume", action="store_true",
                       help="continue from the checkpoint (an error if it does not exist)")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in place of an existing checkpoint and metrics (a fresh "
                            "run refuses them otherwise)")
    train.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                       help="hyperparameters, e.g. --set learning_rate=3e-4 num_envs=16 "
                            "(default: per algorithm and env)")
    train.add_argument("--json", action="store_true", help="end with one JSON line")
    add_process_options(train, _positive_int)
    train.set_defaults(run=_rl_train)
    evaluate = command(rl_commands, "eval", help="evaluate a checkpoint deterministically")
    evaluate.add_argument("--checkpoint", required=True, type=_existing_file,
                          help="a checkpoint written by rl train (data only)")
    evaluate.add_argument("--episodes", type=_positive_int, default=20, help="episodes to run")
    evaluate.add_argument("--seed", type=int, default=0, help="the episodes' seed")
    evaluate.add_argument("--seed-index", type=int, default=0,
                          help="which seed of a multi-seed run")
    evaluate.add_argument("--backend", choices=["auto", "gymnax", "gymnasium", "brax"], default="auto",
                          help="auto: brax for brax: ids, gymnax where it has the env")
    evaluate.add_argument("--video", default=None,
                          help="also render one deterministic episode into this .gif or .mp4 "
                               "(gymnasium environments; MuJoCo renders headless through EGL)")
    evaluate.add_argument("--json", action="store_true", help="end with one JSON line")
    evaluate.set_defaults(run=_rl_eval)
    return parser


def _resume_command(argv: list[str]) -> str:
    """The command line that resumes the interrupted one."""
    kept = [a for a in argv if a != "--overwrite"]
    return shlex.join(["scorefn", *kept, *([] if "--resume" in kept else ["--resume"])])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(parser, args, argv)
    except BaseException as error:
        if not joined_processes():
            raise
        leave_processes(error)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    from scorefn.runs.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    name = " ".join(["scorefn", args.command] + ([args.rl_command] if args.command == "rl" else []))
    try:
        try:
            launched = start_processes(args, argv)
        except ValueError as error:
            raise CommandError(str(error)) from None
        if launched is not None:
            return launched
        return args.run(args)
    except KeyboardInterrupt:
        checkpoint = getattr(args, "checkpoint", None)
        evaluating = args.command == "rl" and args.rl_command == "eval"
        if checkpoint and os.path.isfile(checkpoint) and not evaluating:
            print(f"interrupted; the last checkpoint is {checkpoint}. Resume with:\n  "
                  f"{_resume_command(argv)}", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, ImportError) as error:
        parser.exit(2, f"{name}: error: {error}\n")
    except FloatingPointError as error:  # a run that diverged: its message, not a traceback
        print(f"{name}: error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        from scorefn.runs.checkpoints import CheckpointError

        if not isinstance(error, CheckpointError):
            raise
        parser.exit(2, f"{name}: error: {error}\n")


if __name__ == "__main__":
    raise SystemExit(main())
