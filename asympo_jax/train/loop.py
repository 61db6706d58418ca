"""The training loop: async generator -> train step -> publish -> metrics -> eval -> checkpoint.

A checkpoint taken after step s holds the params theta_s, the optimizer state, the base RNG key, and the
batches the generator already sampled for steps s .. s+k-1 (with theta_{s-k} .. theta_{s-1}, which the
checkpoint does not hold). Resuming feeds those batches first and restarts the generator at step s+k with
theta_s, so a resumed fixed_lag run repeats the uninterrupted one exactly.

Every process runs this loop (JAX multi-controller). Batches arrive process-local (each process samples its
own slice of the prompts) and become global arrays sharded over data x fsdp; only process 0 writes metrics.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from asympo_jax.train import checkpoint
from asympo_jax.train import metrics
from asympo_jax.train import optim
from asympo_jax.rollout import generator as rollout
from asympo_jax.rollout import train_batch
from asympo_jax.rollout.train_batch import TrainBatch
from asympo_jax.train import step as train_step
from asympo_jax.train.step import TrainState

Evaluate = Callable[[nnx.State, int], Mapping[str, float]]


@dataclasses.dataclass
class Result:
  state: TrainState
  step: int  # completed steps
  stopped_by_signal: bool


def _to_global(batch_local: TrainBatch, rows: jax.sharding.NamedSharding) -> TrainBatch:
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(rows, np.asarray(v)), batch_local)


def _batch_metrics(batch: TrainBatch) -> dict[str, jax.Array]:
  """Reward and response-length statistics of the global batch; the mean length of right (reward >= 1) and
  of wrong responses is NaN when the batch has none of them."""
  rewards_B = batch.rewards_B.astype(jnp.float32)
  length_B = batch.loss_mask_BxT.sum(axis=1)
  right_B = rewards_B >= 1.0
  side_mean = lambda keep_B: jnp.where(keep_B, length_B, 0.0).sum() / jnp.where(keep_B.any(), keep_B.sum(), jnp.nan)
  return {"reward/mean": rewards_B.mean(), "reward/std": rewards_B.std(),
          "reward/accuracy": right_B.mean(), "response/length_mean": length_B.mean(),
          "response/length_right_mean": side_mean(right_B), "response/length_wrong_mean": side_mean(~right_B),
          "response/length_max": length_B.max(), "response/tokens": length_B.sum()}


class _Run:
  """The state of one run of the loop (a class only to share the pieces between its phases)."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: Mesh, model: nnx.Module):
    self.cfg, self.mesh = cfg, mesh
    self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
    self.tx, self.schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    self.state, self.shardings = train_step.init_state(params, self.tx, mesh)
    self.rows = train_step.batch_sharding(mesh)
    self.ref_params = rollout.copy_params(params) if cfg.objective.kl_coef > 0 else None
    self.rng = np.asarray(jax.random.key_data(jax.random.key(cfg.seed))).tolist()
    self.pending: dict[int, tuple[TrainBatch, dict[str, float]]] = {}
    self.ckpt = checkpoint.Checkpointer(cfg.workdir, cfg.checkpoint.keep)

  # ---------------------------------------------------------------- checkpoints
  def restore(self) -> tuple[int, dict[str, float] | None]:
    """Loads the newest intact checkpoint if the run directory has one; returns the completed steps and
    the metrics record of that step as the checkpoint holds it."""
    def target(meta: dict[str, Any]) -> dict[str, Any]:
      pending = {str(t): {k: jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=self.rows)
                          for k, (shape, dtype) in spec.items()}
                 for t, spec in meta["pending_spec"].items()}
      return {"train": checkpoint.abstract(self.state), "pending": pending}

    found = self.ckpt.restore_newest_intact(target)
    if found is None:
      return 0, None
    step, restored, meta = found
    if meta["rng"] != self.rng:
      raise ValueError(f"{self.ckpt.directory}/{step}: written with another config.seed than "
                       f"{self.cfg.seed}; use a new workdir for a new seed")
    changed = sorted(k for k, v in _flat(self.cfg.to_dict()).items() if _flat(meta["config"]).get(k) != v)
    if changed:
      logging.warning("resuming %s with changed config keys: %s", self.cfg.workdir, ", ".join(changed))
    self.state = restored["train"]
    self.pending = {int(t): (TrainBatch.from_fields(fields), meta["pending_info"][t])
                    for t, fields in restored["pending"].items()}
    logging.info("resumed from step %d (%d batches already sampled)", step, len(self.pending))
    return step, meta.get("record")

  def fetch(self, gen: rollout.RolloutGenerator, step: int) -> tuple[TrainBatch, dict[str, float]]:
    """Batch `step` from the generator, checked against the contract and made global."""
    local, info = gen.get(step)
    train_batch.check(local, self.cfg.rollout.max_prompt_len, self.cfg.rollout.max_new_tokens)
    return _to_global(local, self.rows), info

  def save(self, step: int, gen: rollout.RolloutGenerator, record: Mapping[str, float]) -> None:
    # Take the batches already sampled for the next steps out of the generator, so they can be saved.
    last = min(step + self.cfg.rollout.staleness, self.cfg.train.steps)
    for t in range(step, last):
      if t not in self.pending:
        self.pending[t] = self.fetch(gen, t)
    pending = {str(t): (self.pending[t][0].present(), self.pending[t][1]) for t in range(step, last)}
    # Prompts are a function of the step (data.problems_for_step), so the step is the data position.
    position = {"next_step": step, "prompts_consumed": step * self.cfg.rollout.prompts_per_step}
    meta = {"step": step, "data_position": position, "rng": self.rng, "config": self.cfg.to_dict(),
            "pending_spec": {t: {k: (list(v.shape), v.dtype.name) for k, v in b.items()}
                             for t, (b, _) in pending.items()},
            "pending_info": {t: info for t, (_, info) in pending.items()},
            # The metrics record of this step, for a resumed run whose predecessor died before writing it.
            "record": {k: float(v) for k, v in record.items()}}
    self.ckpt.save(step, {"train": self.state, "pending": {t: b for t, (b, _) in pending.items()}}, meta)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def train(cfg: ml_collections.ConfigDict, mesh: Mesh, model: nnx.Module, build_batch: rollout.BuildFn, *,
          transfer: Callable[[Any], Any] = rollout.copy_params, evaluate: Evaluate | None = None) -> Result:
  """Runs (or resumes) the loop until cfg.train.steps or a stop signal; see the module docstring.

  `build_batch(params, step) -> (batch, info)` samples this process's rows of batch `step` (a TrainBatch)
  with the generator's copy of the params (made by `transfer`); `evaluate(params, step)` returns eval
  metrics of the params after `step` updates: before training, every cfg.eval.every steps and at the end.

  Metrics records are keyed by the number of updates done: record s holds the step that made theta_s
  (and the eval of theta_s); record 0 holds only the eval of the initial params.
  """
  run = _Run(cfg, mesh, model)
  start, start_record = run.restore()
  total = cfg.train.steps
  is_main = jax.process_index() == 0
  writer = metrics.MetricsWriter(cfg.workdir, cfg.metrics, cfg.to_dict(), is_main, start_step=start,
                                 checkpoint_record=start_record)
  bar = metrics.ProgressBar(start, total, enabled=is_main and cfg.metrics.progress_bar)
  spec = train_step.TrainSpec.from_config(cfg)
  step_fn = train_step.make_train_step(spec, run.graphdef, run.rest, run.tx, run.schedule, mesh, run.shardings)
  stats = jax.jit(_batch_metrics)
  stop = checkpoint.StopSignals()
  gen = rollout.RolloutGenerator(build_batch, run.state.params, cfg.rollout, total,
                                 start_step=start + len(run.pending), params0_version=start, transfer=transfer)
  step, stopped = start, False
  evaluating = evaluate is not None and cfg.eval.every > 0

  def eval_metrics(step: int) -> dict[str, float]:
    t0 = time.perf_counter()
    out = {f"eval/{k}": v for k, v in evaluate(run.state.params, step).items()}
    return {**out, "time/eval": time.perf_counter() - t0}

  try:
    if evaluating and start == 0:
      writer.write(0, eval_metrics(0))
    while step < total and not stopped:
      t0 = time.perf_counter()
      if step in run.pending:
        batch, info = run.pending.pop(step)
      else:
        batch, info = run.fetch(gen, step)
      t1 = time.perf_counter()
      run.state, step_metrics = step_fn(run.state, batch, run.ref_params)
      scalars = jax.device_get({**step_metrics, **stats(batch)})
      t2 = time.perf_counter()
      gen.publish(run.state.params, step + 1)
      t3 = time.perf_counter()
      step += 1
      rows, width = batch.tokens_BxT.shape
      scalars.update(info)
      scalars.update({"time/get_batch": t1 - t0, "time/train": t2 - t1, "time/publish": t3 - t2,
                      "time/step": t3 - t0, "throughput/train_tokens_per_s": rows * width / (t2 - t1),
                      "throughput/response_tokens_per_s": scalars["response/tokens"] / (t3 - t0)})
      if evaluating and (step % cfg.eval.every == 0 or step == total):
        scalars.update(eval_metrics(step))
      stopped = checkpoint.any_process(stop.is_set())
      if stopped or step == total or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
        t5 = time.perf_counter()
        run.save(step, gen, scalars)
        scalars["time/checkpoint"] = time.perf_counter() - t5
      writer.write(step, scalars)
      bar.update(scalars)
  finally:
    gen.close()
    run.ckpt.close()
    writer.close()
    bar.close()
    stop.restore()
  if stopped:
    logging.info("stopped by signal %s after step %d; checkpoint saved", stop.received, step)
  return Result(run.state, step, stopped)
