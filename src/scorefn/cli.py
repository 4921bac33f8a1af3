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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
