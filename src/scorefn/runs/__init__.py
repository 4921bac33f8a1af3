"""The run driver every long run shares (``es.minimize``, ``rl.train``, ``vi.fit``, the
discrete VAE): atomic checkpoints of JAX pytrees, the settings check on resume, the progress
bar, the metrics files and the plots. Public, so that a loop of your own can checkpoint and
resume the same way."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn.runs import checkpoints
from scorefn.runs.processes import barrier, is_main, to_host
from scorefn.validation import is_key


def all_finite(tree: Any) -> bool:
    """Every floating leaf finite, checked on the host: an eager jnp check would compile two
    small programs per leaf shape."""
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree)
               if jnp.issubdtype(jnp.result_type(x), jnp.floating))


def describe(obj: Any) -> str:
    """``repr(obj)`` without the memory addresses of functions (in an optax optimiser, a
    baseline), which differ between processes: a setting as a checkpoint records it."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def tree_digest(tree: Any) -> str:
    """A SHA-256 of a pytree's structure, shapes, dtypes and values: data or initial values
    recorded by what they hold, not by name."""
    h = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(jax.random.key_data(leaf) if is_key(leaf) else leaf)
        h.update(f"{array.shape}{array.dtype}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def refuse_changed_settings(path: str, recorded: dict | None, now: dict, *,
                            what: str = "settings", may_change: str = "") -> None:
    """The one resume check of every run (es, rl, vi): a ValueError naming each entry of
    ``now`` that differs from the ``recorded`` one, with both values, so a resume never
    continues a run under other settings while its checkpoint claims the old ones; a
    checkpoint that records no settings (``recorded`` None) cannot be checked and is refused.
    Tuples and lists compare equal, and so do two NaNs (the same setting). ``may_change``
    names what a resume is allowed to change, for the message."""
    if recorded is None:
        raise ValueError(f"{path} records no {what}, so a resume cannot check that they are "
                         "the same; start a new run")

    def plain(value):
        return list(value) if isinstance(value, tuple) else value

    def same(a, b):
        a, b = plain(a), plain(b)
        return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)

    changed = sorted(k for k in now if not same(recorded.get(k), now[k]))
    if not changed:
        return
    detail = ", ".join(f"{k} (the seed)" if k == "key" else
                       f"{k}={plain(recorded.get(k))!r}, now {plain(now[k])!r}" for k in changed)
    allowed = f" ({may_change} may change)" if may_change else ""
    raise ValueError(f"{path} was written by a run with other {what} ({detail}); resume it "
                     f"with the same ones{allowed}, or start a new run")


def refuse_overwrite(checkpoint: str | None, log_dir: str | None, overwrite: bool) -> None:
    """A fresh run never replaces an earlier run's checkpoint or metrics silently: a
    ``ValueError`` saying how to resume or start over, unless ``overwrite``."""
    if overwrite:
        return
    found = [p for p in (checkpoint, log_dir and os.path.join(log_dir, "metrics.jsonl"))
             if p is not None and os.path.exists(p)]
    if found:
        raise ValueError(f"{found[0]} holds an earlier run; resume it (resume=True, --resume), "
                         "start over in its place (overwrite=True, --overwrite), or choose "
                         "another checkpoint and log folder")


def progress_bar(enabled: bool, description: str, total: int, unit: str, field: str):
    """A started rich progress bar with one live ``field`` (or None when disabled); update it
    with ``bar.update(bar.task_ids[0], completed=..., value=...)``."""
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn(f"{{task.completed:,}}/{{task.total:,}} {unit}  {field} "
                              "{task.fields[value]}"),
                   TimeElapsedColumn())
    bar.add_task(description, total=total, value="–")
    bar.start()
    return bar


class Run:
    """The driver every long run shares (``es.minimize``, ``rl.train``, ``vi.fit``, the
    discrete VAE): its checkpoint, the settings check on resume, the progress bar, the
    metrics files and the compilation cache.

    - ``restored``: on ``resume`` the payload of the checkpoint (``scorefn.runs.checkpoints``;
      pytrees of custom nodes come back as ``StoredTree``, for ``checkpoints.restore``),
      after checking its kind and version and refusing other ``settings`` (naming them);
      ``resume`` without a ``checkpoint`` path, or naming a file that does not exist, is an
      error;
    - earlier work is never overwritten silently: a fresh run (no ``resume``) whose
      ``checkpoint`` or ``log_dir`` metrics already exist is refused, saying how to resume
      or start over, unless ``overwrite=True``;
    - ``save(**state)``: the state, the settings and the version, written atomically, so an
      interrupted (even killed) run resumes from its last save;
    - ``advance(completed, value)``: the progress bar (``progress=False``: nothing);
    - ``log(row)``: the metrics files in ``log_dir`` (``MetricsLog``; appended to on resume);
    - JAX's persistent compilation cache, turned on (``compilation_cache=False``: left as it
      is), so a second run of the same programs does not compile them again;
    - as a context manager, the bar stops and the metrics files close on every way out;
    - under ``jax.distributed`` (``scorefn.runs.processes``) every process runs the loop and
      calls ``save``, which gathers arrays split across processes; process 0 alone writes
      the checkpoint and the metrics and shows the progress.

    The loop itself (what a chunk computes, when to stop) stays the application's, so its
    algorithm reads top to bottom.
    """

    def __init__(self, kind: str, version: int, *, checkpoint: str | None, resume: bool,
                 settings: dict | None, what: str = "settings", may_change: str = "",
                 progress: bool = False,
                 description: str = "", total: int = 0, unit: str = "steps",
                 field: str = "value", log_dir: str | None = None, step_field: str = "step",
                 compilation_cache: bool = True, overwrite: bool = False):
        if compilation_cache:
            from scorefn.runs.compilation_cache import enable_compilation_cache

            enable_compilation_cache()
        if resume and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=<path of an earlier run's checkpoint>")
        self.kind, self.version, self.checkpoint = kind, version, checkpoint
        self.settings = settings
        self.restored = None
        if resume:
            if not os.path.exists(checkpoint):
                raise checkpoints.CheckpointError(
                    f"resume: no checkpoint at {checkpoint} (a run writes it at its first save; "
                    "start without resume, or name the file an earlier run wrote)")
            self.restored = checkpoints.load(checkpoint, kind=kind, version=version)
            refuse_changed_settings(checkpoint, self.restored.get("settings"), settings or {},
                                    what=what, may_change=may_change)
        else:
            refuse_overwrite(checkpoint, log_dir, overwrite)
        # every process checks the files before process 0 writes any
        barrier(f"scorefn run {kind}")
        self.main = is_main()
        self.progress = progress and self.main
        self._bar_options = (self.progress, description, total, unit, field)
        self._bar = None
        self._metrics_options = (log_dir if self.main else None, step_field)
        self._metrics = None

    def __enter__(self) -> Run:
        self._bar = progress_bar(*self._bar_options)
        log_dir, step_field = self._metrics_options
        self._metrics = MetricsLog(log_dir, self.restored is not None, step_field)
        return self

    def __exit__(self, *_exc_info) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def log(self, row: dict) -> None:
        """One row of metrics to the files in ``log_dir`` (inside the ``with`` block)."""
        self._metrics.write(row)

    def save(self, **state: Any) -> None:
        """Write ``state`` with the settings and the version (nothing without a path)."""
        if self.checkpoint is not None:
            state = to_host(state)  # a collective when arrays span processes: all call it
            if self.main:
                checkpoints.save(self.checkpoint, {**state, "settings": self.settings},
                                 kind=self.kind, version=self.version)

    def announce_resume(self, done: int, total: int, unit: str = "steps") -> None:
        """Say on stderr where a resumed run continues (with ``progress`` on)."""
        if self.restored is not None and self.progress:
            import sys

            print(f"resuming {self.checkpoint} from {unit} {done:,} of {total:,}",
                  file=sys.stderr)

    def advance(self, completed: int, value: str | None = None) -> None:
        if self._bar is not None:
            fields = {} if value is None else {"value": value}
            self._bar.update(self._bar.task_ids[0], completed=completed, **fields)


@contextlib.contextmanager
def saved_figure(path: str, figsize: tuple[float, float] = (6, 4)):
    """A matplotlib figure and its axes (Agg, no display needed), saved to ``path`` at 120 dpi
    and closed when the block ends: the plots of every run (ES convergence, RL learning
    curves, ELBO curves). Under ``jax.distributed``, process 0 alone writes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield fig, ax
        fig.tight_layout()
        if is_main():
            fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def plot_with_running_mean(ax: Any, y: np.ndarray, max_window: int) -> None:
    """A noisy per-step curve, faint, and its running mean over ``max_window`` steps (fewer
    for short runs) on top."""
    y = np.asarray(y)
    window = max(1, min(max_window, len(y) // 10))
    ax.plot(np.arange(1, len(y) + 1), y, alpha=0.25, lw=0.6, label="per step")
    ax.plot(np.arange(window, len(y) + 1), np.convolve(y, np.ones(window) / window, "valid"),
            lw=1.5, label=f"{window}-step mean")


class MetricsLog:
    """A run's metrics, one row per evaluation or chunk: ``metrics.jsonl`` and ``metrics.csv``
    in ``log_dir`` (appended to on resume), and TensorBoard events when ``tensorboardX`` is
    installed, indexed by the row's ``step_field``. ``log_dir=None`` writes nothing."""

    def __init__(self, log_dir: str | None, append: bool, step_field: str = "step"):
        self.step_field = step_field
        self.log_dir = log_dir
        self.rows = []
        self.tensorboard = None
        if log_dir is None:
            return
        os.makedirs(log_dir, exist_ok=True)
        mode = "a" if append else "w"
        self.jsonl = open(os.path.join(log_dir, "metrics.jsonl"), mode)
        self.csv_path = os.path.join(log_dir, "metrics.csv")
        self.csv_header = append and os.path.exists(self.csv_path)
        self.csv = open(self.csv_path, mode, newline="")
        try:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir)
        except ImportError:
            pass

    def write(self, row: dict) -> None:
        if self.log_dir is None:
            return
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        flat = {k: (np.mean(v) if isinstance(v, list) else v) for k, v in row.items()}
        writer = csv.DictWriter(self.csv, fieldnames=list(flat))
        if not self.csv_header:
            writer.writeheader()
            self.csv_header = True
        writer.writerow(flat)
        self.csv.flush()
        if self.tensorboard is not None:
            for k, v in flat.items():
                if k != self.step_field:
                    self.tensorboard.add_scalar(k, float(v), int(flat[self.step_field]))

    def close(self) -> None:
        if self.log_dir is None:
            return
        self.jsonl.close()
        self.csv.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
