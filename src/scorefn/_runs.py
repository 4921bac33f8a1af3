"""What every long run shares: atomic checkpoints of JAX pytrees and a rich progress bar."""

from __future__ import annotations

import dataclasses
import os
import pickle
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
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
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
    if not isinstance(payload, dict) or payload.get("version") != version:
        raise ValueError(f"{path} is not a {kind} checkpoint (version {version})")
    return payload


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
