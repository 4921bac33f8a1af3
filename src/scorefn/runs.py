"""The run driver every long run shares (``es.minimize``, ``rl.train``, ``vi.fit``, the
discrete VAE): atomic checkpoints of JAX pytrees, the settings check on resume, the progress
bar, the metrics files and the plots. Public, so that a loop of your own can checkpoint and
resume the same way."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import pickle
import re
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class _Key:
    """A typed PRNG key on the host (pickle keeps its raw data)."""

    data: np.ndarray


def to_host(tree: Any) -> Any:
    """Every leaf as a numpy array; typed PRNG keys kept as keys."""
    def leaf(x):
        if _is_key(x):
            return _Key(np.asarray(jax.random.key_data(x)))
        return np.asarray(x)

    return jax.tree.map(leaf, tree)


def from_host(tree: Any) -> Any:
    """The inverse of ``to_host``."""
    def leaf(x):
        if isinstance(x, _Key):
            return jax.random.wrap_key_data(jnp.asarray(x.data))
        return jnp.asarray(x)

    return jax.tree.map(leaf, tree, is_leaf=lambda x: isinstance(x, _Key))


def all_finite(tree: Any) -> bool:
    """Every floating leaf finite, checked on the host: an eager jnp check would compile two
    small programs per leaf shape."""
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree)
               if jnp.issubdtype(jnp.result_type(x), jnp.floating))


def save_checkpoint(path: str, payload: dict) -> None:
    """Pickle ``payload`` to ``path`` atomically: an interrupted write never leaves a half
    file, and a concurrent reader sees the old file or the whole new one (a unique
    temporary file in the same folder, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as fh:
            pickle.dump(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path: str, version: int, kind: str) -> dict:
    with open(path, "rb") as fh:
        payload = pickle.load(fh)
    # "kind" is recorded by Run.save; earlier checkpoints have only the version.
    if (not isinstance(payload, dict) or payload.get("version") != version
            or payload.get("kind", kind) != kind):
        raise ValueError(f"{path} is not a {kind} checkpoint (version {version})")
    return payload


def describe(obj: Any) -> str:
    """``repr(obj)`` without the memory addresses of functions (in an optax optimiser, a
    baseline), which differ between processes: a setting as a checkpoint records it."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


def tree_digest(tree: Any) -> str:
    """A SHA-256 of a pytree's structure, shapes, dtypes and values: data or initial values
    recorded by what they hold, not by name."""
    h = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        h.update(f"{array.shape}{array.dtype}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def refuse_changed_settings(path: str, recorded: dict | None, now: dict, *,
                            what: str = "settings", may_change: str = "") -> None:
    """The one resume check of every run (es, rl, vi): a ValueError naming each entry of
    ``now`` that differs from the ``recorded`` one, with both values, so a resume never
    continues a run under other settings while its checkpoint claims the old ones.
    ``recorded`` None (a checkpoint from before settings were recorded) passes. Tuples and
    lists compare equal, and so do two NaNs (the same setting). ``may_change`` names what
    a resume is allowed to change, for the message."""
    if recorded is None:
        return

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

    - ``restored``: on ``resume`` the payload of the checkpoint (None on a fresh start),
      after checking its kind and version and refusing other ``settings`` (naming them);
      ``resume`` without a ``checkpoint`` path is an error;
    - ``save(**state)``: the state, the settings and the version, written atomically, so an
      interrupted (even killed) run resumes from its last save;
    - ``advance(completed, value)``: the progress bar (``progress=False``: nothing);
    - ``log(row)``: the metrics files in ``log_dir`` (``MetricsLog``; appended to on resume);
    - JAX's persistent compilation cache, turned on (``compilation_cache=False``: left as it
      is), so a second run of the same programs does not compile them again;
    - as a context manager, the bar stops and the metrics files close on every way out.

    The loop itself (what a chunk computes, when to stop) stays the application's, so its
    algorithm reads top to bottom.
    """

    def __init__(self, kind: str, version: int, *, checkpoint: str | None, resume: bool,
                 settings: dict | None, what: str = "settings", may_change: str = "",
                 progress: bool = False,
                 description: str = "", total: int = 0, unit: str = "steps",
                 field: str = "value", log_dir: str | None = None, step_field: str = "step",
                 compilation_cache: bool = True):
        if compilation_cache:
            from scorefn._compilation_cache import enable_compilation_cache

            enable_compilation_cache()
        if resume and checkpoint is None:
            raise ValueError("resume=True needs checkpoint=<path of an earlier run's checkpoint>")
        self.kind, self.version, self.checkpoint = kind, version, checkpoint
        self.settings = settings
        self.restored = None
        if resume and os.path.exists(checkpoint):
            self.restored = load_checkpoint(checkpoint, version, kind)
            refuse_changed_settings(checkpoint, self.restored.get("settings"), settings or {},
                                    what=what, may_change=may_change)
        self._bar_options = (progress, description, total, unit, field)
        self._bar = None
        self._metrics_options = (log_dir, step_field)
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
            save_checkpoint(self.checkpoint, {**state, "settings": self.settings,
                                              "kind": self.kind, "version": self.version})

    def advance(self, completed: int, value: str | None = None) -> None:
        if self._bar is not None:
            fields = {} if value is None else {"value": value}
            self._bar.update(self._bar.task_ids[0], completed=completed, **fields)


@contextlib.contextmanager
def saved_figure(path: str, figsize: tuple[float, float] = (6, 4)):
    """A matplotlib figure and its axes (Agg, no display needed), saved to ``path`` at 120 dpi
    and closed when the block ends: the plots of every run (ES convergence, RL learning
    curves, ELBO curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield fig, ax
        fig.tight_layout()
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
