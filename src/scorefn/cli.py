"""The ``scorefn`` command."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args: argparse.Namespace) -> int:
    from scorefn.demo import run_demo

    sizes = tuple(int(s) for s in args.sample_sizes.split(","))
    result = run_demo(args.out, seed=args.seed, num_samples=args.num_samples,
                      num_repeats=args.repeats, sample_sizes=sizes)
    if args.json:
        keys = ("plot", "score_error", "tables", "off_policy", "mis", "natural_gradient")
        print(json.dumps({k: result[k] for k in keys}))
    return 0


def _optimize(args: argparse.Namespace) -> int:
    import numpy as np

    from scorefn import es

    if args.function not in es.FUNCTIONS:
        raise SystemExit(f"unknown function {args.function!r}; known: {sorted(es.FUNCTIONS)}")
    f, binary = es.FUNCTIONS[args.function]
    strategy = args.strategy or ("bernoulli" if binary else "xnes")
    if binary != (strategy == "bernoulli"):
        raise SystemExit(
            f"{args.function} is {'binary' if binary else 'continuous'}: use "
            f"{'--strategy bernoulli' if binary else 'a continuous strategy (xnes, snes, openai_es)'}")
    if binary:
        x0 = np.full(args.dim, 0.5)
    else:
        x0 = np.random.default_rng(args.seed).uniform(-3, 3, args.dim)
    target = args.target if args.target is not None else (0.0 if binary else 1e-8)
    result = es.minimize(f, x0, strategy, sigma0=args.sigma0, seed=args.seed,
                         max_evaluations=args.max_evals, target_f=target, progress=not args.json,
                         plot=args.plot)
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


VI_MODELS = ("logistic-breast-cancer", "gaussian-mixture")
BASELINES = ("auto", "none", "ema", "leave-one-out", "optimal")


def _fit(args: argparse.Namespace) -> int:
    import jax
    import optax

    from scorefn import baselines, vi

    if args.model == "logistic-breast-cancer":
        model, data = vi.models.logistic_regression, vi.models.breast_cancer()
    else:
        model, data = vi.models.gaussian_mixture, (vi.models.mixture_data(args.seed)[0],)
    name = args.baseline
    if name == "auto":  # no baseline for pathwise-only fits; else LOO when K ≥ 2, EMA for K = 1
        name = "none" if args.estimator in ("reparam", "iwae", "vimco") else (
            "leave-one-out" if args.samples >= 2 else "ema")
    baseline = {"none": None, "ema": baselines.ema(0.9), "leave-one-out": baselines.leave_one_out(),
                "optimal": baselines.optimal()}[name]
    plot = args.plot or f"elbo_{args.model}_{args.estimator}.png"
    result = vi.fit(model, args.guide, data, jax.random.key(args.seed), estimator=args.estimator,
                    optimizer=optax.adam(args.lr), steps=args.steps, num_samples=args.samples,
                    baseline=baseline, checkpoint=args.checkpoint, resume=args.resume,
                    progress=not args.json, plot=plot)
    if args.json:
        print(json.dumps({"model": args.model, "seed": args.seed, "baseline": name, "plot": plot,
                          **result.as_dict()}))
    else:
        print(f"{args.model}, {args.estimator} (K = {args.samples}, baseline {name}): ELBO "
              f"{result.final_elbo:.2f} (mean of the last 100 steps) after {result.steps:,} steps "
              f"in {result.wall_s:.2f} s; saved {plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorefn",
        description="Score-function (REINFORCE) gradient estimation on JAX.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="the log-derivative trick on a Gaussian: scores, estimators, variance plot"
    )
    demo.add_argument("--out", default="scorefn-demo", help="folder for the PNG (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--num-samples", type=int, default=100,
                      help="samples per estimate in the tables (default: %(default)s)")
    demo.add_argument("--repeats", type=int, default=400,
                      help="independent estimates per estimator (default: %(default)s)")
    demo.add_argument("--sample-sizes", default="10,30,100,300,1000",
                      help="comma-separated N for the variance plot (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="end with one JSON line of results")
    demo.set_defaults(run=_demo)

    optimize = commands.add_parser(
        "optimize", help="minimise a standard test function with a search-gradient strategy")
    optimize.add_argument("--function", required=True,
                          help="sphere, ellipsoid, rosenbrock, rastrigin, ackley or onemax")
    optimize.add_argument("--dim", type=int, default=10)
    optimize.add_argument("--strategy", choices=["xnes", "snes", "openai_es", "bernoulli"], default=None,
                          help="default: xnes (bernoulli for onemax)")
    optimize.add_argument("--seed", type=int, default=0)
    optimize.add_argument("--sigma0", type=float, default=0.5)
    optimize.add_argument("--max-evals", type=int, default=200_000)
    optimize.add_argument("--target", type=float, default=None,
                          help="stop at f <= target (default 1e-8; 0 for onemax)")
    optimize.add_argument("--plot", default=None, help="save a convergence PNG here")
    optimize.add_argument("--json", action="store_true", help="end with one JSON line")
    optimize.set_defaults(run=_optimize)

    from scorefn.vi.objectives import ESTIMATORS

    fit = commands.add_parser("fit", help="variational inference on a worked model")
    fit.add_argument("--model", required=True, choices=VI_MODELS)
    fit.add_argument("--estimator", choices=ESTIMATORS, default="mixed",
                     help="ELBO gradient estimator (default: %(default)s)")
    fit.add_argument("--guide", choices=["mean_field", "full_rank"], default="mean_field")
    fit.add_argument("--steps", type=int, default=3000)
    fit.add_argument("--samples", type=int, default=1, help="K, guide samples per step")
    fit.add_argument("--baseline", choices=BASELINES, default="auto",
                     help="for score-function blocks (auto: leave-one-out if K >= 2, else ema)")
    fit.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--plot", default=None, help="ELBO-curve PNG (default: elbo_<model>_<estimator>.png)")
    fit.add_argument("--checkpoint", default=None, help="checkpoint file, written every 100 steps")
    fit.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    fit.add_argument("--json", action="store_true", help="end with one JSON line")
    fit.set_defaults(run=_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from scorefn._compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
