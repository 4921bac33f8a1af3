"""Several processes, on one machine or several: a run under ``jax.distributed``.

Every process runs the same program on its own devices; together they form one set of
global devices (``jax.devices()``), so a run given ``devices=jax.device_count()`` splits
its batch across all of them exactly as it does across one process's devices
(``scorefn.runs.devices``), and its update is the same on every process. Checkpoints,
metrics, plots and progress come from process 0 alone; a checkpoint holds data only, so a
run resumes with another process or device count.

``launch`` starts N local processes of a command (``scorefn ... --processes N``, or
``python -m scorefn.runs.processes N your_script.py ...`` for a script of your own that calls
``initialize_from_environment()`` first), with a coordinator on localhost and CPU collectives
over gloo; on several machines, run the same command on each with
``SCOREFN_COORDINATOR=host:port``, ``SCOREFN_NUM_PROCESSES`` and ``SCOREFN_PROCESS_ID`` set
(or ``scorefn``'s ``--coordinator``, ``--num-processes``, ``--process-id``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from typing import Any

import jax
import numpy as np

COORDINATOR, NUM_PROCESSES, PROCESS_ID = ("SCOREFN_COORDINATOR", "SCOREFN_NUM_PROCESSES",
                                          "SCOREFN_PROCESS_ID")


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """``jax.distributed.initialize`` for this process, with gloo as the CPU collectives
    (XLA's CPU backend has none by default). Call it before any JAX computation."""
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def initialize_from_environment() -> bool:
    """``initialize`` from ``SCOREFN_COORDINATOR``, ``SCOREFN_NUM_PROCESSES`` and
    ``SCOREFN_PROCESS_ID`` when they are set (as ``launch`` sets them); False otherwise."""
    if COORDINATOR not in os.environ:
        return False
    try:
        count, index = int(os.environ[NUM_PROCESSES]), int(os.environ[PROCESS_ID])
    except (KeyError, ValueError):
        raise ValueError(f"{COORDINATOR} is set: {NUM_PROCESSES} and {PROCESS_ID} must be "
                         "integers too") from None
    initialize(os.environ[COORDINATOR], count, index)
    return True


def is_main() -> bool:
    """Whether this is process 0, the one that writes files and shows progress."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches ``barrier(name)`` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(command: list[str], num_processes: int, *, port: int | None = None) -> int:
    """Run ``command`` (e.g. ``[sys.executable, "-m", "scorefn", "optimize", ...]``) as
    ``num_processes`` local processes under one coordinator on localhost, each told its
    place by the environment (``initialize_from_environment``); process 0's output is this
    one's, the others' is shown only if they fail.
    Returns the first non-zero exit status (0 when all succeed); when one process fails,
    the others are stopped (they would wait for it at the next collective)."""
    port = free_port() if port is None else port
    children, logs = [], []
    for index in range(num_processes):
        env = dict(os.environ, **{COORDINATOR: f"127.0.0.1:{port}",
                                  NUM_PROCESSES: str(num_processes), PROCESS_ID: str(index)})
        log = None if index == 0 else tempfile.TemporaryFile(mode="w+")
        logs.append(log)
        children.append(subprocess.Popen(list(command), env=env,
                                         stdout=log, stderr=subprocess.STDOUT if log else None))
    status = 0
    try:
        pending = list(children)
        while pending:
            for child in list(pending):
                try:
                    code = child.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                pending.remove(child)
                if code and not status:
                    status = code
                    for other in pending:
                        other.terminate()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for index, log in enumerate(logs):
        if log is not None:
            if children[index].returncode not in (0, None) and status:
                log.seek(0)
                sys.stderr.write(f"--- process {index} ---\n{log.read()}")
            log.close()
    return status


def to_host(tree: Any) -> Any:
    """``tree`` readable whole on this host: an array split across processes is gathered
    from all of them into a NumPy array (``multihost_utils.process_allgather``, a collective
    that every process must call), a replicated one read from a local copy; arrays this
    process holds whole stay as they are."""
    from jax.experimental import multihost_utils

    def gather(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(gather(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(gather, tree)


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m scorefn.runs.processes N script.py [args ...]: N local "
              "processes of a script that calls "
              "scorefn.runs.processes.initialize_from_environment() first", file=sys.stderr)
        return 2
    return launch([sys.executable, *argv[1:]], int(argv[0]))


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
