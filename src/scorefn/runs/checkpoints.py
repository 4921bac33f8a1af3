"""Checkpoint files that hold only data: reading one never runs code.

Every scorefn checkpoint (``rl``, ``es``, ``vi``, the discrete VAE, the traced-program cache)
is one file in this format:

```python
SCOREFN-CHECKPOINT\\n                      the magic line
{"format": 1, "kind": ..., "version": ..., "payload_bytes": n, "sha256": ...}\\n
<n bytes of payload>                     a zip: tree.json and arrays/<i>.npy
```

The header is read and checked first (format, kind, version), then the payload's length
(shorter: truncated) and its SHA-256 (different: corrupted). ``tree.json`` holds the payload's
structure and every non-array value (settings, step counts, metrics) as JSON; arrays are
``.npy`` members read with ``allow_pickle=False``, and a typed PRNG key is stored as its key
data with the name of its implementation. Nothing is ever unpickled, and no class is named by
the file: a pytree of other node types (an optax state, a strategy's state) is stored as its
leaves and put back into the structure of a template the caller builds, ``restore(stored,
like)``, after checking every leaf's shape and dtype.

Writes are atomic: a temporary file in the same folder, flushed and fsynced, then renamed
over the old file (and the folder fsynced), so the previous checkpoint stays whole until the
new one is complete, and a run killed at any moment leaves one or the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn.validation import is_key

MAGIC = b"SCOREFN-CHECKPOINT\n"
FORMAT = 1
_PICKLE_PROTOCOLS = (b"\x80",)  # protocol 2 and newer start with PROTO
_MAX_HEADER = 1 << 16


class CheckpointError(ValueError):
    """A file that is not a readable scorefn checkpoint of the kind asked for: missing,
    empty, a folder, truncated, corrupted, a pickle, or of another kind or version."""


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass
class StoredTree:
    """The leaves of a pytree whose node types a file may not name (NamedTuples, dataclasses,
    optax states), in ``jax.tree.leaves`` order; ``structure`` is the ``PyTreeDef`` it was
    written from, as text. ``restore(stored, like=template)`` rebuilds it."""

    leaves: list
    structure: str

    def tree_flatten(self):
        return list(self.leaves), self.structure

    @classmethod
    def tree_unflatten(cls, structure, leaves):
        return cls(list(leaves), structure)


# --- writing -----------------------------------------------------------------------------


def save(path: str, payload: dict, *, kind: str, version: int) -> None:
    """Write ``payload`` (a dict of JSON values, arrays, typed PRNG keys and pytrees of
    them) to ``path`` atomically. A value of any other type is a ``TypeError`` naming it."""
    if not isinstance(payload, dict):
        raise TypeError(f"a checkpoint's payload must be a dict, got {type(payload).__name__}")
    arrays: list[np.ndarray] = []
    tree = _encode(payload, arrays, "payload")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("tree.json", json.dumps(tree))
        for i, array in enumerate(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            archive.writestr(f"arrays/{i}.npy", member.getvalue())
    body = buffer.getvalue()
    header = {"format": FORMAT, "kind": kind, "version": version, "payload_bytes": len(body),
              "sha256": hashlib.sha256(body).hexdigest()}
    _write_atomically(path, MAGIC + json.dumps(header).encode() + b"\n" + body)


def copy(source: str, destination: str) -> None:
    """Copy a checkpoint file atomically (``destination`` is the old file or the new one,
    never half of one)."""
    with open(source, "rb") as fh:
        _write_atomically(destination, fh.read())


def _write_atomically(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself is durable only once the folder's entry is.
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _encode(value: Any, arrays: list, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if type(value) is list:
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if type(value) is tuple:
        return {"$tuple": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if type(value) is dict:
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: a checkpoint stores dicts with str keys only")
        return {"$dict": {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in value.items()}}
    if is_key(value):
        arrays.append(np.asarray(jax.random.key_data(value)))
        return {"$key": len(arrays) - 1, "impl": _impl_name(value)}
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"{where}: an array of Python objects cannot be stored")
        arrays.append(array)
        return {"$array": len(arrays) - 1, "scalar": isinstance(value, np.generic)}
    leaves, treedef = jax.tree.flatten(value)
    if len(leaves) == 1 and leaves[0] is value:  # a leaf of no known kind
        raise TypeError(f"{where}: a checkpoint cannot store a {type(value).__name__} "
                        f"({value!r:.80}); store arrays, numbers, strings and pytrees of them")
    return {"$tree": [_encode(x, arrays, f"{where}.leaf{i}") for i, x in enumerate(leaves)],
            "structure": str(treedef)}


def _impl_name(key: jax.Array) -> str:
    return str(jax.random.key_impl(key))


# --- reading -----------------------------------------------------------------------------


def read_header(path: str) -> dict:
    """The header of the checkpoint at ``path`` (format, kind, version, payload size and
    checksum), read without touching the payload: a ``CheckpointError`` for a missing,
    empty or foreign file."""
    with _open(path) as fh:
        return _header(fh, path)


def load(path: str, *, kind: str, version: int) -> dict:
    """The payload written by ``save(path, ..., kind=kind, version=version)``.

    Checked in this order, each failure a ``CheckpointError`` naming ``path``: the file
    exists and is a file; it is not empty; it is not a pickle (never unpickled); it starts
    with the magic line; its header is of this kind and version; the payload is whole (its
    length) and undamaged (its SHA-256); the payload parses. Pytrees of other node types
    come back as ``StoredTree``; give them to ``restore`` with a template."""
    with _open(path) as fh:
        header = _header(fh, path)
        if header.get("kind") != kind or header.get("version") != version:
            raise CheckpointError(
                f"{path} is a {header.get('kind')!r} checkpoint (version {header.get('version')}); "
                f"expected a {kind!r} checkpoint (version {version})")
        size = header["payload_bytes"]
        body = fh.read(size + 1)
    if len(body) < size:
        raise CheckpointError(f"{path} is truncated: {len(body):,} of its {size:,} payload bytes "
                              "are there (an interrupted copy?)")
    if len(body) > size or hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise CheckpointError(f"{path} is corrupted: its payload does not match the checksum "
                              "written with it")
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            tree = json.loads(archive.read("tree.json"))
            names = set(archive.namelist())
            return _decode(tree, archive, names)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as error:
        raise CheckpointError(f"{path} is damaged: its payload cannot be read ({error})") from None


@contextlib.contextmanager
def _open(path: str):
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder; a checkpoint is a file")
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error.strerror}") from None
    with fh:
        yield fh


def _header(fh, path: str) -> dict:
    start = fh.read(len(MAGIC))
    if not start:
        raise CheckpointError(f"{path} is empty (a run killed before its first save?)")
    if start[:1] in _PICKLE_PROTOCOLS:
        raise CheckpointError(
            f"{path} is a pickle, which scorefn never loads: unpickling a file runs whatever "
            "code it holds. scorefn checkpoints hold only data; start the run again to write "
            "one (pickle checkpoints were never released)")
    if start != MAGIC:
        raise CheckpointError(f"{path} is not a scorefn checkpoint (it does not start with "
                              f"{MAGIC.strip().decode()})")
    line = fh.readline(_MAX_HEADER)
    try:
        header = json.loads(line)
        fields_ok = (isinstance(header, dict) and header.get("format") == FORMAT
                     and isinstance(header.get("payload_bytes"), int)
                     and isinstance(header.get("sha256"), str))
    except ValueError:
        fields_ok = False
    if not fields_ok:
        if not line.endswith(b"\n"):
            raise CheckpointError(f"{path} is truncated inside its header")
        raise CheckpointError(f"{path} has a damaged header, or one of a format this scorefn "
                              f"does not read (it reads format {FORMAT})")
    return header


def _decode(value: Any, archive: zipfile.ZipFile, names: set) -> Any:
    if isinstance(value, list):
        return [_decode(v, archive, names) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tuple" in value:
        return tuple(_decode(v, archive, names) for v in value["$tuple"])
    if "$dict" in value:
        return {k: _decode(v, archive, names) for k, v in value["$dict"].items()}
    if "$tree" in value:
        return StoredTree([_decode(v, archive, names) for v in value["$tree"]],
                          str(value["structure"]))
    if "$array" in value or "$key" in value:
        index = value.get("$array", value.get("$key"))
        name = f"arrays/{int(index)}.npy"
        if name not in names:
            raise CheckpointError(f"the payload lacks {name}")
        with archive.open(name) as member:
            array = np.lib.format.read_array(io.BytesIO(member.read()), allow_pickle=False)
        if "$key" in value:
            return jax.random.wrap_key_data(jnp.asarray(array), impl=str(value["impl"]))
        return array[()] if value.get("scalar") else array
    raise CheckpointError(f"unknown entry in the payload: {sorted(value)}")


def restore(stored: Any, like: Any = None) -> Any:
    """A loaded value as JAX arrays: numpy arrays become ``jax.Array``, typed keys stay keys.

    With ``like`` (a template of the same structure, e.g. a freshly initialised optimiser
    state), the stored leaves are put into ``like``'s structure, after checking their number,
    shapes and dtypes: how a pytree of NamedTuples or dataclasses comes back. Without it, a
    ``StoredTree`` inside ``stored`` is an error."""
    if like is None:
        if any(isinstance(x, StoredTree) for x in
               jax.tree.leaves(stored, is_leaf=lambda x: isinstance(x, StoredTree))):
            raise ValueError("this checkpoint entry holds a pytree of custom nodes; restore it "
                             "with like=<a template of the same structure>")
        return jax.tree.map(_to_jax, stored)
    leaves = jax.tree.leaves(stored)
    wanted, treedef = jax.tree.flatten(like)
    if len(leaves) != len(wanted):
        raise CheckpointError(f"the checkpoint holds {len(leaves)} arrays where this run has "
                              f"{len(wanted)} ({treedef})")
    for i, (got, want) in enumerate(zip(leaves, wanted)):
        if np.shape(got) != np.shape(want) or _dtype(got) != _dtype(want):
            raise CheckpointError(
                f"the checkpoint's array {i} has shape {np.shape(got)} and dtype {_dtype(got)} "
                f"where this run has {np.shape(want)} and {_dtype(want)}")
    return jax.tree.unflatten(treedef, [_to_jax(x) for x in leaves])


def _dtype(x: Any) -> str:
    if is_key(x):
        return f"key<{_impl_name(x)}>"
    if isinstance(x, bool | int | float):
        return type(x).__name__
    return str(np.asarray(x).dtype)


def _to_jax(x: Any) -> Any:
    if isinstance(x, np.ndarray | np.generic):
        return jnp.asarray(x)
    return x
