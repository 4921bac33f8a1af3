"""The command's options for runs across processes (``scorefn.runs.processes``)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn

_joined = False


def joined() -> bool:
    """Whether this process joined a run across processes."""
    return _joined


def leave(error: BaseException) -> NoReturn:
    """End this process of a run across processes at once, with ``error``'s status: on a
    normal exit ``jax.distributed`` waits at its shutdown barrier for every other process
    (minutes), which a failed process's peers never reach."""
    code = error.code if isinstance(error, SystemExit) else 1
    if not isinstance(error, SystemExit):
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def add_options(parser: argparse.ArgumentParser, positive_int) -> None:
    """``--processes N`` (N local processes), and ``--coordinator``, ``--num-processes``,
    ``--process-id`` for one process of a run across machines."""
    group = parser.add_argument_group("across processes (jax.distributed)")
    group.add_argument("--processes", type=positive_int, default=None,
                       help="run as N local processes, one coordinator on localhost and CPU "
                            "collectives over gloo; the run splits across all their devices")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="this process belongs to a run across machines: the coordinator "
                            "(process 0's host) and a free port, the same on every machine")
    group.add_argument("--num-processes", type=positive_int, default=None,
                       help="with --coordinator: how many processes in all")
    group.add_argument("--process-id", type=int, default=None,
                       help="with --coordinator: this process's index, 0 to N - 1")


def without_processes(argv: list[str]) -> list[str]:
    """``argv`` without its ``--processes N`` (or ``--processes=N``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out


def start(args: argparse.Namespace, argv: list[str]) -> int | None:
    """Launch the local processes (an exit status), or join a run across processes (None:
    go on and run the command here). With several processes the run's ``--devices``
    defaults to every device of every process. A ValueError names a wrong combination."""
    from scorefn.runs import processes  # imports jax: not at the parser's import

    count, coordinator = getattr(args, "processes", None), getattr(args, "coordinator", None)
    if count is not None and coordinator is not None:
        raise ValueError("--processes starts local processes itself; --coordinator joins a run "
                         "started elsewhere: give one of them")
    if coordinator is not None:
        if args.num_processes is None or args.process_id is None:
            raise ValueError("--coordinator needs --num-processes and --process-id")
        processes.initialize(coordinator, args.num_processes, args.process_id)
    elif not processes.initialize_from_environment():  # a launched process joins this way
        if count is not None and count > 1:
            return processes.launch([sys.executable, "-m", "scorefn", *without_processes(argv)],
                                    count)
        return None
    _joined_run(args)
    return None


def _joined_run(args: argparse.Namespace) -> None:
    """This process is one of a run's: its ``--devices`` default to every process's."""
    import jax

    global _joined
    _joined = True
    if getattr(args, "devices", "absent") is None:
        args.devices = jax.device_count()
