"""`validate(cfg, devices)`: every check a run's config must pass before anything is built or compiled.

Each section's value checks live with the code that owns the section; this module runs them all, plus the
checks that span sections (the batch against the mesh and the processes). Errors are ConfigError naming
the key.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import ml_collections

from asympo_jax.train import checkpoint
from asympo_jax.data import datasets as data
from asympo_jax.evaluation import scores as evaluation
from asympo_jax.train import metrics
from asympo_jax.model import architecture as model_config
from asympo_jax.model import attention
from asympo_jax.train import objectives
from asympo_jax.train import optim
from asympo_jax.rollout import generator as rollout
from asympo_jax.rollout import engine, sampler
from asympo_jax.common import sharding
from asympo_jax.common.checks import check
from asympo_jax.run.config import validate_keys

# Section validators, each given the whole config (most read their own section only).
SECTIONS: dict[str, Callable[[ml_collections.ConfigDict], None]] = {
    "model": lambda c: model_config.validate(c.model),
    "data": lambda c: data.validate(c.data),
    "objective": objectives.validate,
    "rollout": lambda c: rollout.validate(c.rollout),
    "sampler": lambda c: sampler.validate(c.rollout),
    "engine": lambda c: engine.validate(c.rollout),
    "eval": lambda c: evaluation.validate(c.eval),
    "optim": lambda c: optim.validate(c.optim),
    "checkpoint": lambda c: checkpoint.validate(c.checkpoint),
    "metrics": lambda c: metrics.validate(c.metrics),
}


def _validate_train(cfg: ml_collections.ConfigDict) -> None:
  # The sampler's row keys take the seed as an int32 array argument.
  check(0 <= cfg.seed < 2**31, "seed", f"must be in [0, 2**31), got {cfg.seed}")
  t = cfg.train
  check(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
  check(t.micro_batches >= 1, "train.micro_batches", f"must be >= 1, got {t.micro_batches}")
  check(t.logprob_chunk >= 0, "train.logprob_chunk", f"must be >= 0 (0: direct), got {t.logprob_chunk}")
  check(cfg.rollout.group_size >= 2 or not objectives.OBJECTIVES[cfg.objective.name].uses_advantages,
        "rollout.group_size",
        f"must be >= 2 (group-relative advantages need two samples), got {cfg.rollout.group_size}")


def _validate_distributed(cfg: ml_collections.ConfigDict) -> None:
  d = cfg.distributed
  check(d.num_processes >= 1, "distributed.num_processes", f"must be >= 1, got {d.num_processes}")
  check(0 <= d.process_id < d.num_processes, "distributed.process_id",
        f"must be in [0, {d.num_processes}), got {d.process_id}")
  check(d.num_processes == 1 or d.coordinator, "distributed.coordinator",
        "must be host:port when distributed.num_processes > 1")


def _validate_batch(cfg: ml_collections.ConfigDict, mesh_shape: dict[str, int], num_processes: int) -> None:
  rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
  micro = cfg.train.micro_batches
  check(rows % micro == 0, "train.micro_batches",
        f"{micro} micro-batches do not divide the batch of {rows} rows (rollout.prompts_per_step x group_size)")
  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  check((rows // micro) % shards == 0, "rollout.prompts_per_step",
        f"a micro-batch of {rows // micro} rows does not split over the mesh's data x fsdp = {shards} shards "
        f"(batch {rows} rows, {micro} micro-batches)")
  check(cfg.rollout.prompts_per_step % num_processes == 0, "rollout.prompts_per_step",
        f"{cfg.rollout.prompts_per_step} prompts do not split over {num_processes} processes")


def training_devices(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
                     ) -> list[jax.Device]:
  """The devices the train step runs on: all of them, less the disjoint rollout.devices range if any."""
  devices = list(jax.devices() if devices is None else devices)
  rollout_mesh = sampler.rollout_mesh(cfg.rollout, devices)
  if rollout_mesh is None:
    return devices
  taken = set(rollout_mesh.devices.flat)
  return [d for d in devices if d not in taken]


def validate(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None,
             num_processes: int | None = None) -> None:
  """Raises ConfigError (naming the key) for anything in `cfg` that cannot run on `devices`."""
  validate_keys(cfg)
  for validate_section in SECTIONS.values():
    validate_section(cfg)
  _validate_train(cfg)
  _validate_distributed(cfg)
  processes = num_processes or jax.process_count()
  check(not cfg.rollout.devices or processes == 1, "rollout.devices",
        "must be empty with several processes (each process samples on its own local devices)")
  train_devices = training_devices(cfg, devices)
  check(train_devices, "rollout.devices", "leaves no device for training")
  platform = train_devices[0].platform
  name = attention.resolve(cfg.model.attention, platform)
  check(attention.runs_on(name, platform), "model.attention",
        f"{name!r} runs on {'/'.join(attention.BACKENDS[name] or ['any backend'])} only, these devices are "
        f"{platform}; use {attention.memory_efficient(platform)!r} or 'plain' here")
  mesh = sharding.make_mesh(cfg.mesh, train_devices)
  _validate_batch(cfg, dict(mesh.shape), processes)

