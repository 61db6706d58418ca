"""Logical-axis sharding: the device mesh, the rules from logical axis names to mesh axes, and helpers.

Every parameter carries `logical_axes` metadata (e.g. ("layers", "embed", "heads", "head_dim")) and the model
constrains its activations by logical names too. `RULES` maps each logical name to the mesh axes that split it;
a logical name missing from the rules, a mesh axis absent from the mesh, or a mesh axis that does not divide the
dimension leaves that dimension unsplit, so the same model runs on one CPU (a 1-device mesh, or no mesh at
all) and on a pod.

Mesh axes: `data` (batch only), `fsdp` (batch and parameters: ZeRO-3 style), `tensor` (heads / MLP / vocab).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from asympo_jax.common.checks import check

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axes that split it (in order). Parameters use the plain names, activations `act_*`.
RULES: dict[str, tuple[str, ...]] = {
    # parameters
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "head_dim": (),
    "layers": (),
    "norm": (),
    # activations
    "act_batch": ("data", "fsdp"),
    "act_seq": (),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    "cache_seq": (),
}


def make_mesh(cfg_mesh: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all). One axis may be -1: the rest of the devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {name: int(cfg_mesh[name]) for name in MESH_AXES}
  rest = [name for name, size in sizes.items() if size == -1]
  check(len(rest) <= 1, f"mesh.{rest[-1] if rest else ''}", "only one mesh axis may be -1")
  for name, size in sizes.items():
    check(size == -1 or size >= 1, f"mesh.{name}", f"must be >= 1 or -1, got {size}")
  known = math.prod(size for size in sizes.values() if size != -1)
  if rest:
    check(len(devices) % known == 0, f"mesh.{rest[0]}",
          f"the other mesh axes ({known} devices) do not divide the {len(devices)} devices")
    sizes[rest[0]] = len(devices) // known
  total = math.prod(sizes.values())
  bad = next((name for name in MESH_AXES if sizes[name] > 1), "data")
  check(total == len(devices), f"mesh.{bad}",
        f"mesh {sizes} uses {total} devices but {len(devices)} are available")
  shape = tuple(sizes[name] for name in MESH_AXES)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def data_mesh(devices: Sequence[jax.Device]) -> Mesh:
  """A (data, fsdp, tensor) mesh with every device on `data`: rows split, parameters replicated."""
  return Mesh(np.asarray(devices).reshape(len(devices), 1, 1), MESH_AXES)


def row_shards(mesh: Mesh | None) -> int:
  """How many ways `mesh` splits a batch's rows (data x fsdp); 1 without a mesh."""
  return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def logical_spec(axes: Sequence[str | None], shape: Sequence[int], mesh_shape: dict[str, int]) -> PartitionSpec:
  """The PartitionSpec `RULES` give an array of `shape` with logical `axes` on a mesh of `mesh_shape`."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    mesh_axes = []
    for mesh_axis in RULES.get(name, ()) if name else ():
      size = mesh_shape.get(mesh_axis, 1)
      split = math.prod(mesh_shape[a] for a in mesh_axes) * size
      if size > 1 and mesh_axis not in used and dim % split == 0:
        mesh_axes.append(mesh_axis)
    used.update(mesh_axes)
    spec.append(tuple(mesh_axes) if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
  return PartitionSpec(*spec)


def logical_sharding(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, logical_spec(axes, shape, dict(mesh.shape)))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Constrains an activation to its logical sharding under the current mesh; a no-op without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, logical_spec(axes, x.shape, dict(mesh.shape)))


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """The NamedSharding of every Variable in an nnx.State (or a tree of Variables), from its `logical_axes`."""

  def one(v: nnx.Variable) -> Any:
    axes = v.get_metadata().get("logical_axes")
    if axes is None:
      raise ValueError(f"variable {type(v).__name__} of shape {v.shape} has no logical_axes metadata")
    return v.replace(logical_sharding(axes, v.shape, mesh))

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
