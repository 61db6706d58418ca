"""Assembling a run from its config: the mesh, the model, the data, the sampler and rewards, the trainer.

`rollout_pieces` is the part that does not care where prompts and rewards come from (tests give synthetic
ones): it slices each step's prompts for this process and builds the sampler on the devices it samples on
(`sampling_mesh`). `make_transfer` copies published parameters there. With one process the sampler uses
rollout.devices, or else the training mesh with the rows split over its data x fsdp shards like a train
batch (left to itself, jit would run the whole batch on every device); with several, every process samples
its slice on its own local devices with a full copy of the parameters, gathered at each publish (on the
learner thread, so all processes run that collective in the same order).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from asympo_jax.rollout import completions
from asympo_jax.data import datasets as data
from asympo_jax.evaluation import scores as evaluation
from asympo_jax.evaluation import suite
from asympo_jax.model import hf_io
from asympo_jax.data import prompts
from asympo_jax.rollout import rewards
from asympo_jax.rollout import generator as rollout
from asympo_jax.rollout import batch as rollout_batch
from asympo_jax.rollout import engine, sampler
from asympo_jax.common import sharding
from asympo_jax.train import loop as trainer
from asympo_jax.run import validation
from asympo_jax.rollout import supervised as supervised_batch
from asympo_jax.model import architecture as model_config
from asympo_jax.model.decoder import Decoder, cast_params


def initialize_distributed(cfg_distributed: ml_collections.ConfigDict) -> None:
  """jax.distributed from config.distributed, or from the environment (JAX_COORDINATOR_ADDRESS, or
  coordinator "auto": jax's cluster detection for SLURM, TPU pods, ...). Must run before any device use."""
  if not cfg_distributed.coordinator and "JAX_COORDINATOR_ADDRESS" not in os.environ:
    return
  # Cross-process collectives of the CPU backend (a no-op for accelerators' own collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if cfg_distributed.coordinator in ("", "auto"):
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(cfg_distributed.coordinator, cfg_distributed.num_processes,
                               cfg_distributed.process_id)


def process_slice(num_prompts: int) -> slice:
  """This process's share of a step's prompts (validation made it divide evenly)."""
  per = num_prompts // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def process_prompts(prompts_for_step: rollout_batch.PromptsFn, num_prompts: int) -> rollout_batch.PromptsFn:
  """`prompts_for_step` restricted to this process's slice of the step's prompts (and their targets)."""
  mine = process_slice(num_prompts)

  def local_prompts(step: int):
    ids, targets = prompts_for_step(step)
    return list(ids)[mine], list(targets)[mine]

  return local_prompts


def sampling_mesh(cfg: ml_collections.ConfigDict, training_mesh: Mesh,
                  devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The devices this process samples and evaluates on (see the module docstring); `devices` as in
  validation.training_devices."""
  if jax.process_count() > 1:
    return sharding.data_mesh(jax.local_devices())
  return sampler.rollout_mesh(cfg.rollout, devices) or training_mesh


def make_transfer(mesh: Mesh, dtype: str | None = None) -> Callable[[Any], Any]:
  """A function that copies published parameters onto `mesh` (gathered first with several processes), in
  the compute `dtype` (model.dtype; None: as published). The sampler computes in that dtype anyway: cast
  before the move, the copy the generator holds and the bytes it moves are half the float32 ones under
  bfloat16 compute.

  Always a copy, even onto the very shardings the parameters have: the learner donates them to its next step.
  """
  targets = None

  def transfer(params):
    nonlocal targets
    if dtype is not None:
      params = cast_params(params, dtype)
    if targets is None:
      targets = sharding.state_shardings(params, mesh)
    if jax.process_count() > 1:
      params = multihost_utils.process_allgather(params, tiled=True)
    return jax.device_put(params, targets, may_alias=False)

  return transfer


def make_sampler(cfg: ml_collections.ConfigDict, model: Decoder, mesh: Mesh, eos_ids: Sequence[int],
                 pad_id: int) -> sampler.Sampler | engine.Engine:
  """The generator's sampler (rollout.engine) of this process's slice of a step's prompts, on `mesh`
  (`sampling_mesh`)."""
  mine = process_slice(cfg.rollout.prompts_per_step)
  local_cfg = copy.deepcopy(cfg.rollout)
  local_cfg.prompts_per_step = mine.stop - mine.start
  return engine.make_sampler(model, local_cfg, eos_ids, pad_id, mesh=mesh)


def rollout_pieces(cfg: ml_collections.ConfigDict, model: Decoder, mesh: Mesh,
                   prompts_for_step: rollout_batch.PromptsFn, decode: Callable[[Sequence[int]], str],
                   reward_fn: rollout_batch.RewardFn, eos_ids: Sequence[int], pad_id: int) -> rollout.BuildFn:
  """The generator's build_batch, sampling on `mesh` (`sampling_mesh`); `prompts_for_step` gives all P prompts
  of a step."""
  mine = process_slice(cfg.rollout.prompts_per_step)
  smp = make_sampler(cfg, model, mesh, eos_ids, pad_id)
  local_prompts = process_prompts(prompts_for_step, cfg.rollout.prompts_per_step)
  return rollout_batch.make_build_batch(smp, local_prompts, decode, reward_fn, cfg.seed,
                                        prompt_ids_for_step=lambda step: range(mine.start, mine.stop))


def make_evaluate(cfg: ml_collections.ConfigDict, model: Decoder, tokenizer: Any, score: evaluation.Score,
                  mesh: Mesh, transfer: Callable[[Any], Any]) -> trainer.Evaluate | None:
  """The trainer's periodic eval (suite.evaluate) on cfg.data.eval, sampling on `mesh` with parameters that
  `transfer` put there: summaries as metrics, and on process 0 the results files under suite.results_dir.
  None when eval is off."""
  sets = suite.load_sets(cfg) if cfg.eval.every else []
  if not sets:
    return None
  completer = completions.Completer(model, tokenizer, cfg, seed=cfg.seed, mesh=mesh)
  out_dir = suite.results_dir(cfg) if jax.process_index() == 0 else None
  run_name = os.path.basename(os.path.abspath(cfg.workdir))

  def evaluate(params: Any, step: int) -> dict[str, float]:
    completer.state = transfer(params)  # every process evaluates its own copy: no collectives inside
    summaries = suite.evaluate(sets, completer, score, cfg.eval.samples, run=run_name, step=step, out_dir=out_dir)
    return {f"{name}/{k}": float(v) for name, summary in summaries.items() for k, v in summary.items()}

  return evaluate


def run(cfg: ml_collections.ConfigDict, supervised: bool = False) -> trainer.Result:
  """Trains the HF model of cfg.model.hf_path on cfg.data.train (validate the config first).

  `supervised`: the responses are the gold answers (asympo_jax/rollout/supervised.py) instead of samples;
  for the warm start.
  """
  mesh = sharding.make_mesh(cfg.mesh, validation.training_devices(cfg))
  model = hf_io.load_model(cfg.model.hf_path, mesh, **model_config.options(cfg.model, mesh.devices.flat[0].platform))
  tokenizer = hf_io.load_tokenizer(cfg.model.hf_path)
  problems = data.load(cfg.data.train, cfg.data.dir, cfg.data.hub)
  limit = cfg.rollout.max_prompt_len

  def prompts_for_step(step: int):
    picks = data.problems_for_step(problems, step, cfg.rollout.prompts_per_step, cfg.seed)
    ids = prompts.encode(cfg.data.template, [p.question for p in picks], tokenizer)
    return [p[-limit:] for p in ids], picks  # too long: keep the end (instruction and question's end)

  eos = completions.eos_ids(tokenizer, model.cfg.eos_token_id)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
  decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
  sample_mesh = sampling_mesh(cfg, mesh)
  transfer = make_transfer(sample_mesh, cfg.model.dtype)
  with rewards.RewardPool(cfg.data.reward_workers, cfg.data.reward_timeout_s) as pool:
    if supervised:  # the generator builds batches from gold answers: it needs no copy of the parameters
      local_prompts = process_prompts(prompts_for_step, cfg.rollout.prompts_per_step)
      encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
      build = supervised_batch.make_build_batch(local_prompts, encode, cfg.rollout, eos[0], pad,
                                                cfg.warm_start.target)
      generator_transfer = rollout.copy_params
    else:
      build = rollout_pieces(cfg, model, sample_mesh, prompts_for_step, decode, pool.score, eos, pad)
      generator_transfer = transfer
    evaluate = make_evaluate(cfg, model, tokenizer, pool.score, sample_mesh, transfer)
    return trainer.train(cfg, mesh, model, build, transfer=generator_transfer, evaluate=evaluate)
