"""Several devices in one process: the ``devices=`` argument of the runs, as a JAX ``Mesh``.

A run splits its batch (an ES population) along the mesh and keeps everything else
replicated; the split is a ``jax.lax.with_sharding_constraint`` inside the compiled
program, so XLA partitions the batched work (``vmap(f)``) across the devices and gathers
the results before the update, which then runs the same on every device. On a CPU, JAX
shows several devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set
before it is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def mesh_of(devices: int | Sequence[Any] | Mesh | None, axis: str = "batch") -> Mesh | None:
    """The mesh a run's ``devices=`` names: None (the mesh of the caller's
    ``jax.set_mesh(...)`` context if there is one, else one device and no mesh), a count (the
    first ``devices`` of ``jax.devices()``), a sequence of devices, or a ``Mesh`` (used as it
    is; the batch is split over all its axes)."""
    if devices is None:
        get_mesh = getattr(jax.sharding, "get_mesh", None)  # jax.set_mesh's, jax >= 0.7
        if get_mesh is None:
            return None
        try:
            current = get_mesh()
        except ValueError:  # inside jit: the context's mesh is abstract there
            current = jax.sharding.get_abstract_mesh()
        return None if current is None or current.empty else current
    if isinstance(devices, Mesh):
        return devices
    if isinstance(devices, int) and not isinstance(devices, bool):
        available = jax.devices()
        if devices < 1 or devices > len(available):
            raise ValueError(
                f"devices must be between 1 and the {len(available)} device(s) JAX sees "
                f"({available[0].platform}); got {devices}. On a CPU, set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={max(devices, 2)} before "
                "importing jax")
        return Mesh(np.array(available[:devices]), (axis,))
    if isinstance(devices, Sequence) and devices and all(
            isinstance(d, jax.Device) for d in devices):
        return Mesh(np.array(list(devices)), (axis,))
    raise TypeError("devices must be None, an int, a sequence of jax devices or a "
                    f"jax.sharding.Mesh; got {devices!r}")


def split(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """``x`` with its leading axis split across the mesh (inside ``jit``); unchanged
    without one."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(mesh.axis_names)))


def replicated(x: Any, mesh: Mesh | None) -> Any:
    """``x`` whole on every device of the mesh (inside ``jit``); unchanged without one."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec()))


def on_mesh(tree: Any, mesh: Mesh | None) -> Any:
    """``tree``'s arrays copied onto every device of the mesh (outside ``jit``), so that a
    program partitioned for the mesh accepts them; arrays already on the mesh's devices (a
    previous call's outputs, split or not) stay as they are, since moving them between
    processes is not a transfer XLA's CPU backend offers. Unchanged without a mesh."""
    if mesh is None:
        return tree
    devices = set(mesh.devices.flat)
    whole = NamedSharding(mesh, PartitionSpec())

    def place(x):
        if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
            return x
        if isinstance(x, jax.Array) and jax.process_count() > 1:
            # across processes an array goes from host memory, the same on every process
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(place(jax.random.key_data(x)),
                                                impl=jax.random.key_impl(x))
            x = np.asarray(x)
        return jax.device_put(x, whole)

    return jax.tree.map(place, tree)
