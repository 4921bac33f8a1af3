"""Traced programs cached on disk with ``jax.export``, next to the compilation cache.

JAX's persistent compilation cache skips XLA's compile on a second run, but every run still
traces the Python function and lowers it to StableHLO before it can look the cache up. For a
training loop that is most of a warm start (0.6 s of PPO's 1 s on a CPU). ``cached_jit``
stores the lowered program itself, serialised by ``jax.export``, under a digest of everything
that determines it: the caller's ``key`` (which must name every value the function closes
over), the argument shapes and dtypes, the versions of jax and of the libraries the program
is built from, and the source of scorefn. A later process with the same digest deserialises
the program and only compiles it (a compilation-cache hit) without tracing.

The programs live in ``<compilation cache>/scorefn-programs`` and follow the same switch:
``SCOREFN_COMPILATION_CACHE=0`` turns both off. Any failure to export, save or load falls
back to plain ``jax.jit``. Each file is a ``scorefn.runs.checkpoints`` file (data only): the
output's tree structure is stored as JSON naming its node types by module and name, and a
type is found only among modules already imported and only if JAX knows it as a pytree node
(nothing is imported or unpickled to read the file); anything else is a cache miss.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorefn import validation
from scorefn.runs import checkpoints
from scorefn.runs.compilation_cache import enable_compilation_cache
from scorefn.runs.compiler_options import cpu_options

FORMAT = 2  # 2: a scorefn.runs.checkpoints file with the tree structure as JSON


def _package_root() -> str:
    import scorefn

    return os.path.dirname(os.path.abspath(scorefn.__file__))


def source_files() -> list[str]:
    """Every module of the scorefn package (whose text joins each program's digest), by
    path relative to the package folder."""
    root = _package_root()
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, files in os.walk(root) for name in files if name.endswith(".py"))


@functools.cache
def _environment_digest(packages: tuple[str, ...]) -> str:
    """scorefn's own source and the versions of the libraries a program is traced from."""
    h = hashlib.sha256()
    root = _package_root()
    for relative in source_files():
        h.update(relative.encode())
        with open(os.path.join(root, relative), "rb") as f:
            h.update(f.read())
    for package in ("jax", "jaxlib", *packages):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{package}={version};".encode())
    h.update(f"x64={jax.config.jax_enable_x64};prng={jax.config.jax_default_prng_impl};"
             f"backend={jax.default_backend()}".encode())
    return h.hexdigest()


def _to_raw(leaves: Sequence[Any]) -> list[Any]:
    # Typed PRNG keys cross the exported boundary as their raw uint32 data.
    return [jax.random.key_data(x) if validation.is_key(x) else x for x in leaves]


def _from_raw(raw: Sequence[Any], key_impls: Sequence[Any]) -> list[Any]:
    return [x if impl is None else jax.random.wrap_key_data(x, impl=impl)
            for x, impl in zip(raw, key_impls)]


def _key_impls(leaves: Sequence[Any]) -> list[Any]:
    return [jax.random.key_impl(x) if validation.is_key(x) else None for x in leaves]


def _impl_names(impls: Sequence[Any]) -> list[str | None]:
    return [None if impl is None else str(impl) for impl in impls]


def structure_to_json(treedef: Any) -> Any:
    """A ``PyTreeDef`` as JSON: ``"*"`` for a leaf, else ``[module, qualname, aux,
    children]``; a TypeError when a node's auxiliary data is not plain data."""
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return "*"
    kind, aux = treedef.node_data()
    encoded_aux = _plain(aux)
    return [kind.__module__, kind.__qualname__, encoded_aux,
            [structure_to_json(child) for child in treedef.children()]]


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if type(value) in (list, tuple):
        return {"seq": type(value).__name__, "items": [_plain(v) for v in value]}
    raise TypeError(f"not plain data: {type(value).__name__}")


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        items = [_unplain(v) for v in value["items"]]
        return tuple(items) if value["seq"] == "tuple" else items
    return value


def structure_from_json(encoded: Any) -> Any:
    """The inverse of ``structure_to_json``, naming only types of modules already imported
    that JAX's registry knows as pytree nodes (a RuntimeError from JAX otherwise)."""
    if encoded == "*":
        return jax.tree.structure(0)
    module, qualname, aux, children = encoded
    if (module, qualname) == ("builtins", "NoneType"):
        kind = type(None)
    else:
        kind = sys.modules.get(module)
        for part in qualname.split("."):
            kind = getattr(kind, part, None)
    if not isinstance(kind, type):
        raise LookupError(f"{module}.{qualname} is not a loaded type")
    return jax.tree_util.PyTreeDef.from_node_data_and_children(
        jax.tree_util.default_registry, (kind, _unplain(aux)),
        [structure_from_json(child) for child in children])


class _Program:
    """One exported program: flat raw arrays in, flat raw arrays out, and the trees."""

    def __init__(self, exported: Any, in_impls: list, out_tree: Any, out_impls: list,
                 options: dict[str, Any] | None):
        self.call = jax.jit(exported.call, compiler_options=options)
        self.in_impls, self.out_tree, self.out_impls = in_impls, out_tree, out_impls

    def __call__(self, leaves: list[Any]) -> Any:
        out = self.call(*_to_raw(leaves))
        return jax.tree.unflatten(self.out_tree, _from_raw(out, self.out_impls))


def cached_jit(fn: Callable, *, key: tuple | None, packages: Sequence[str] = (),
               compiler_options: dict[str, Any] | None = None, **jit_options: Any) -> Callable:
    """``jax.jit(fn)`` whose traced program is cached on disk across processes: how every
    run (``rl.train``, ``vi.fit``, ``es.minimize``) compiles its programs.

    ``key`` must determine everything ``fn`` closes over (e.g. an algorithm's name and its
    frozen config); ``key=None`` says the closure cannot be named (a user's objective or
    model): then the program is only ``jax.jit``-ed, and JAX's persistent compilation cache
    still skips XLA's compile on a later run. ``packages`` names the libraries ``fn`` is
    traced from besides jax and scorefn, whose versions join the digest.
    ``compiler_options`` go to XLA on CPU only (e.g.
    ``scorefn.runs.compiler_options.FAST_COMPILE``); ``jit_options`` (``static_argnums``) to
    ``jax.jit`` when ``key`` is None.
    """
    options = cpu_options(compiler_options)
    if key is None:
        return jax.jit(fn, compiler_options=options, **jit_options)
    if jit_options:
        raise ValueError(f"{sorted(jit_options)} need key=None (an exported program has no "
                         "static arguments)")
    jitted = jax.jit(fn, compiler_options=options)
    programs: dict[tuple, Any] = {}

    def call(*args: Any) -> Any:
        folder = _programs_dir()
        if folder is None:
            return jitted(*args)
        leaves, in_tree = jax.tree.flatten(args)
        leaves = [x if hasattr(x, "dtype") else jnp.asarray(x) for x in leaves]
        # An export is for the devices its inputs live on: their count joins the key.
        devices = max((len(x.sharding.device_set) for x in leaves if hasattr(x, "sharding")),
                      default=1)
        signature = (in_tree, tuple((x.shape, x.dtype) for x in leaves), devices)
        program = programs.get(signature)  # the per-call path: no hashing of the digest
        if program is None:
            described = (str(in_tree), tuple((tuple(x.shape), str(x.dtype)) for x in leaves))
            digest = hashlib.sha256(repr((FORMAT, key, described, devices, options,
                                          _environment_digest(tuple(packages)))).encode()).hexdigest()
            args = jax.tree.unflatten(in_tree, leaves)
            program = (_load(folder, digest, options)
                       or _export(fn, args, folder, digest, options)) or jitted
            programs[signature] = program
        if program is jitted:
            return jitted(*jax.tree.unflatten(in_tree, leaves))
        return program(leaves)

    return call


def _programs_dir() -> str | None:
    cache = enable_compilation_cache()
    if cache is None:
        return None
    return os.path.join(cache, "scorefn-programs")


def _load(folder: str, digest: str, options: dict[str, Any] | None) -> _Program | None:
    path = os.path.join(folder, digest + ".program")
    if not os.path.exists(path):
        return None
    try:
        payload = checkpoints.load(path, kind="scorefn program", version=FORMAT)
        exported = jax.export.deserialize(bytearray(payload["exported"].tobytes()))
        impls = [[None if name is None else jax.random.key_impl(
            jax.random.key(0, impl=name)) for name in payload[which]]
            for which in ("in_impls", "out_impls")]
        return _Program(exported, impls[0], structure_from_json(payload["out_tree"]), impls[1],
                        options)
    except Exception:  # a corrupt or incompatible file: trace again and overwrite it
        return None


def _export(fn: Callable, args: tuple, folder: str, digest: str,
            options: dict[str, Any] | None) -> _Program | None:
    leaves, in_tree = jax.tree.flatten(args)
    in_impls = _key_impls(leaves)
    out_info: dict[str, Any] = {}

    def flat_fn(*raw):
        out = fn(*jax.tree.unflatten(in_tree, _from_raw(raw, in_impls)))
        out_leaves, out_info["tree"] = jax.tree.flatten(out)
        out_info["impls"] = _key_impls(out_leaves)
        return _to_raw(out_leaves)

    try:
        exported = jax.export.export(jax.jit(flat_fn))(*_to_raw(leaves))
        payload = {"exported": np.frombuffer(bytes(exported.serialize()), np.uint8),
                   "in_impls": _impl_names(in_impls),
                   "out_tree": structure_to_json(out_info["tree"]),
                   "out_impls": _impl_names(out_info["impls"])}
    except Exception:  # not exportable (a host callback, no flatbuffers, a node with
        return None    # auxiliary data that is not plain): plain jit
    checkpoints.save(os.path.join(folder, digest + ".program"), payload,
                     kind="scorefn program", version=FORMAT)
    return _Program(exported, in_impls, out_info["tree"], out_info["impls"], options)
