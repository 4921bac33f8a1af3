"""Where ``minimize`` evaluates f when f is plain Python: here, in a local process pool, or on
Ray; one generation's candidates per call, in order, with a timeout and the workers stopped
on every way out."""

from __future__ import annotations

from typing import Any

import numpy as np

EVALUATORS = ("jax", "python", "processes", "ray")


def check_options(evaluator: str, workers: Any, evaluation_timeout: Any) -> None:
    """ValueError naming the first bad option of a Python-side evaluator."""
    from scorefn import validation

    if evaluator not in EVALUATORS:
        raise ValueError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")
    if workers is not None:
        validation.check_int(workers, "workers")
    if evaluation_timeout is not None and not (
            np.ndim(evaluation_timeout) == 0 and evaluation_timeout > 0):
        raise ValueError(
            f"evaluation_timeout must be a positive number of seconds or None, "
            f"got {evaluation_timeout!r}")


class BatchEvaluator:
    """Evaluate f at every row, in order, here, in a process pool or on Ray; a batch that
    takes longer than ``timeout`` seconds raises TimeoutError, and the workers are stopped
    on every way out (a finished run, an error, a timeout, Ctrl-C)."""

    def __init__(self, kind, f, workers, ray_address, timeout):
        self.kind, self.f, self.timeout, self.close_fn = kind, f, timeout, lambda: None
        if kind == "processes":
            import concurrent.futures
            import multiprocessing

            check_sendable(f)
            # spawn, not fork: the parent holds JAX's threads, which fork would copy broken.
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            self.close_fn = self._stop_pool
        elif kind == "ray":
            try:
                import ray
            except ImportError as error:
                raise ImportError("evaluator='ray' needs Ray: pip install 'scorefn[ray]'") from error
            if not ray.is_initialized():
                if ray_address is not None:
                    ray.init(address=ray_address)
                else:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self.ray = ray
            # A system failure (a worker process that dies) resubmits the task.
            self.remote = ray.remote(max_retries=5, retry_exceptions=False)(_call)
            self.pending = []
            self.close_fn = self._cancel_ray_tasks

    def __call__(self, rows):
        if self.kind == "python":
            return [self.f(row) for row in rows]
        if self.kind == "processes":
            import concurrent.futures

            futures = [self.pool.submit(_call, self.f, row) for row in rows]
            done, waiting = concurrent.futures.wait(futures, timeout=self.timeout)
            if waiting:
                raise TimeoutError(self._timeout_message(len(waiting), len(rows)))
            return [future.result() for future in futures]
        self.pending = [self.remote.remote(self.f, row) for row in rows]
        try:
            values = self.ray.get(self.pending, timeout=self.timeout)
        except self.ray.exceptions.GetTimeoutError:
            waiting = len(self.ray.wait(self.pending, num_returns=len(rows), timeout=0)[1])
            raise TimeoutError(self._timeout_message(waiting, len(rows))) from None
        self.pending = []
        return values

    def _timeout_message(self, waiting, total):
        return (f"evaluation_timeout: {waiting} of this generation's {total} evaluations of f "
                f"did not finish within {self.timeout} s on evaluator={self.kind!r}; the workers "
                "were stopped (raise evaluation_timeout if f is that slow)")

    def _stop_pool(self):
        # An evaluation still running (a timeout, Ctrl-C, a hung f) would keep its worker
        # alive after we return: stop them. Python 3.14 has a public method for this; before
        # it, the pool's processes are read before shutdown forgets them.
        terminate = getattr(self.pool, "terminate_workers", None)
        if terminate is not None:
            terminate()
            return
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)

    def _cancel_ray_tasks(self):
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        self.pending = []

    def close(self):
        self.close_fn()


def check_sendable(f) -> None:
    """A process pool sends f by pickle, by reference to its module: fail here, with the
    reason, instead of workers that never start (a spawned worker cannot import a function
    typed into an interactive session or ``python -c``)."""
    import pickle
    import sys

    try:
        pickle.dumps(f)
    except Exception as error:
        raise TypeError(
            "evaluator='processes' sends f to its workers by pickle, and f cannot be pickled "
            f"({type(error).__name__}: {error}); define f with def at the top level of a "
            "module, or use evaluator='ray' (which pickles closures and lambdas)") from error
    module = getattr(f, "__module__", None)
    if module == "__main__" and not getattr(sys.modules.get("__main__"), "__file__", None):
        raise TypeError(
            "evaluator='processes' cannot run an f defined in an interactive session or "
            "`python -c` (its workers cannot import it); define f in a file, or use "
            "evaluator='ray'")


def _call(f, row):
    return float(f(row))
