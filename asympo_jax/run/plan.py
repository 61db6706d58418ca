"""The plan: compile a config's train step and rollout for a target ahead of time, and say whether they fit.

    python -m asympo_jax.run.plan --config configs/qwen3_1p7b_base.py --target tpu:v5p:2x2x1 [--json out.json]
    python -m asympo_jax.run.plan --config configs/default.py --target cpu:8 [--config.train.micro_batches=4]

The model comes from its architecture alone (model.hf_path's config.json when it is there, else
model.config_json, else the scratch size): no weights and no network. Parameters, optimizer state and batches
are jax.ShapeDtypeStructs carrying the shardings train.py would give them on a mesh of the target's devices,
and the programs are lowered through the builders train.py runs (train/step.py's make_train_step and
init_state, run/assemble.py's meshes and make_sampler: the static Sampler or the continuous Engine, whose
programs are what their generate runs for a full batch; rollout/completions.py's eval sampler), so the plan
compiles what a run compiles: the train step, the rollout and the periodic eval's generate.

Per device and program it prints XLA's memory (arguments, outputs, temporaries, total) against the chip's HBM,
FLOPs per step with every loop trip counted (run/costs.py; XLA's own count, loop bodies once, beside it),
compile time, and the roofline step time and MFU. A run holds its programs on the same devices unless
rollout.devices separates them: the rollout (generator thread) beside the train step or eval (learner thread,
the training state resident), and the generator holds up to two parameter copies: the one it samples with
(an argument of the rollout) and one published but not yet taken up; the last column ("both") adds them up.
The exit status is 1 when a program, or "both", do not fit; 2 for a config error.

`check_fits` is the same check for a run's own devices (train.py's, before it loads weights).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from asympo_jax.common import sharding
from asympo_jax.common.checks import ConfigError, check
from asympo_jax.model import architecture, hf_io, kv_cache, scratch
from asympo_jax.model.architecture import ModelConfig
from asympo_jax.model.decoder import Decoder
from asympo_jax.rollout import completions, engine, sampler, train_batch
from asympo_jax.run import assemble, costs, targets, validation
from asympo_jax.run.targets import Chip
from asympo_jax.train import optim
from asympo_jax.train import step as train_step

GiB = 1024**3


@dataclasses.dataclass
class Program:
  """One compiled program's figures, memory per device."""
  name: str
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  total_bytes: int  # the larger of XLA's peak and arguments + outputs - aliased + temporaries + code
  compile_s: float
  xla_flops: float  # per device, each loop body once
  cost: costs.Cost | None  # None: not part of a step (eval)
  error: str | None = None  # XLA's refusal when it ran out of memory compiling


@dataclasses.dataclass
class Plan:
  target: str
  chip: Chip
  devices: int
  shared: bool  # train step and rollout on the same devices
  params_bytes: int  # per device, the learner's parameters
  optimizer_bytes: int
  generator_params_bytes: int  # per rollout device, one copy
  kv_cache_bytes: int  # per rollout device, the largest cache of a rollout
  attention: str  # model.attention as resolved for the devices
  train: Program
  rollout: Program
  eval: Program | None  # None: eval is off

  def programs(self) -> list[Program]:
    return [p for p in (self.train, self.rollout, self.eval) if p is not None]

  def both_bytes(self) -> int:
    """Per device, the most a run holds at once: the rollout (on the generator's thread) and the generator's
    published copy not yet taken up, beside the learner's thread's largest: the train step, or eval's
    generate with the training state (parameters and optimizer state) still resident."""
    learner = self.train.total_bytes if self.shared else 0
    if self.eval is not None:
      learner = max(learner, self.eval.total_bytes + (self.params_bytes + self.optimizer_bytes if self.shared else 0))
    return learner + self.rollout.total_bytes + self.generator_params_bytes

  def fits(self) -> bool:
    if any(p.error for p in self.programs()):
      return False
    return max(*(p.total_bytes for p in self.programs()), self.both_bytes()) <= self.chip.hbm_bytes


def model_config(cfg: ml_collections.ConfigDict, platform: str) -> ModelConfig:
  """The architecture a run of `cfg` on devices of `platform` builds, from config files only."""
  options = architecture.options(cfg.model, platform)
  if cfg.model.hf_path and os.path.isfile(os.path.join(cfg.model.hf_path, "config.json")):
    return hf_io.load_config(cfg.model.hf_path, **options)
  if cfg.model.config_json:
    return hf_io.load_config(cfg.model.config_json, **options)
  if cfg.model.scratch:
    return scratch.model_config(cfg.model.scratch, **options)
  raise ConfigError("config.model: the plan needs model.hf_path (downloaded), model.config_json or model.scratch")


def _abstract(tree: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded jax.ShapeDtypeStructs (the first device's shard)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _program(name: str, lowered: jax.stages.Lowered, cost: costs.Cost, argument_bytes: int) -> Program:
  """Compiles `lowered`; a program XLA refuses for want of memory (XLA:TPU does) becomes a Program that does not
  fit, with the temporaries XLA says it needs (and `argument_bytes`, the inputs' bytes per device)."""
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    found = re.search(r"temporaries \(([\d.]+)([MGT])\)", str(e))
    temp = int(float(found.group(1)) * 1024**"MGT".index(found.group(2)) * 1024**2) if found else 0
    return Program(name, argument_bytes, 0, temp, argument_bytes + temp, time.perf_counter() - t0, 0.0, cost,
                   error=str(e).splitlines()[0])
  seconds = time.perf_counter() - t0
  m = compiled.memory_analysis()
  # XLA:TPU's peak counts more than the parts (its reserved space); XLA:CPU's less: take the larger.
  parts = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
           + m.generated_code_size_in_bytes)
  total = max(getattr(m, "peak_memory_in_bytes", 0), parts)
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return Program(name, m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes, int(total), seconds,
                 float((analysis or {}).get("flops", 0.0)), cost)


@dataclasses.dataclass
class Pieces:
  """What both programs are built from: the architecture, the abstract model and parameters, the meshes."""
  model_cfg: ModelConfig
  model: Decoder  # abstract (nnx.eval_shape)
  params: nnx.State  # abstract, on the training mesh
  train_mesh: Mesh
  sample_mesh: Mesh


def pieces(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device]) -> Pieces:
  model_cfg = model_config(cfg, devices[0].platform)
  train_mesh = sharding.make_mesh(cfg.mesh, validation.training_devices(cfg, devices))
  model = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  return Pieces(model_cfg, model, _abstract(params, sharding.state_shardings(params, train_mesh)), train_mesh,
                assemble.sampling_mesh(cfg, train_mesh, devices))


def train_program(cfg: ml_collections.ConfigDict, p: Pieces, chip: Chip) -> tuple[Program, int]:
  """The compiled train step, as train/loop.py builds it, and the optimizer state's bytes per device."""
  graphdef, _, rest = nnx.split(p.model, nnx.Param, ...)
  tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
  state, shardings = train_step.init_state(p.params, tx, p.train_mesh)
  step = train_step.make_train_step(train_step.TrainSpec.from_config(cfg), graphdef, rest, tx, schedule,
                                    p.train_mesh, shardings)
  r = cfg.rollout
  batch = train_batch.abstract(r.prompts_per_step * r.group_size, r.max_prompt_len + r.max_new_tokens,
                               r.record_behaviour_logprobs, train_step.batch_sharding(p.train_mesh))
  ref_params = p.params if cfg.objective.kl_coef > 0 else None
  cost = costs.train_step(cfg, p.model_cfg, chip, p.train_mesh.size)
  lowered = step.lower(state, batch, ref_params)
  return _program("train_step", lowered, cost, _device_bytes((state, batch, ref_params))), _device_bytes(state.opt_state)


def _generator_params(cfg: ml_collections.ConfigDict, p: Pieces) -> nnx.State:
  """The generator's copy of the parameters, abstract: as run/assemble.py's make_transfer(sample_mesh,
  model.dtype) publishes them, in the compute dtype on the sampling mesh."""
  dtype = np.dtype(jax.numpy.dtype(p.model_cfg.dtype))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype, sharding=s),
                      p.params, sharding.state_shardings(p.params, p.sample_mesh))


def _eos(model_cfg: ModelConfig) -> list[int]:
  eos = model_cfg.eos_token_id
  return [eos] if isinstance(eos, int) else list(eos or ())  # the run adds the tokenizer's: one id more or less


def _compile_sampler(name: str, smp: sampler.Sampler | engine.Engine, gen_params: nnx.State,
                     cost: costs.Cost | None) -> Program:
  """Compiles what `smp.generate` runs for a full batch: the static sampler's generate program, or the
  continuous engine's decode and admit programs, which run one at a time over the same slots: the larger
  counts (compile time and XLA's FLOPs: both)."""
  lowered = smp.lower(gen_params)
  programs = [_program(name, one, cost, _device_bytes(gen_params))
              for one in (lowered if isinstance(lowered, list) else [lowered])]
  largest = max(programs, key=lambda q: q.total_bytes)
  largest.compile_s = sum(q.compile_s for q in programs)
  largest.xla_flops = sum(q.xla_flops for q in programs)
  largest.error = next((q.error for q in programs if q.error), None)
  return largest


def rollout_program(cfg: ml_collections.ConfigDict, p: Pieces, chip: Chip) -> tuple[Program, nnx.State, Any]:
  """The compiled rollout, with the generator's copy of the parameters and its largest KV cache, both abstract."""
  gen_params = _generator_params(cfg, p)
  smp = assemble.make_sampler(cfg, p.model, p.sample_mesh, _eos(p.model_cfg), pad_id=0)
  r = cfg.rollout
  prompt_len = sampler.prompt_bucket(r.max_prompt_len, r.max_prompt_len)
  # An engine whose slots hold every row at once runs the static sampler's program (Engine.one_wave).
  static = smp.one_wave if isinstance(smp, engine.Engine) else smp
  if static is None:
    calls, call_prompts, rows = 1, r.prompts_per_step, smp.slots * smp.shards
    phases = costs.engine_phases(r, rows)
    slots = kv_cache.chunked_slots(prompt_len + r.max_new_tokens)
  else:
    call_prompts = static.micro_prompts(static.cfg.prompts_per_step)
    calls, rows = -(-r.prompts_per_step // call_prompts), call_prompts * r.group_size
    phases = costs.static_phases(r, call_prompts)
    slots = sampler.cache_lengths(prompt_len, r.max_new_tokens, r.decode_segments)[-1]
  cache = _cache(p.model_cfg, rows, slots, p.sample_mesh)
  weight_bytes = _device_bytes(gen_params) * p.sample_mesh.shape["fsdp"]  # gathered whole for every step
  kv_per_row_slot = _device_bytes((cache.k, cache.v)) * p.sample_mesh.size / (rows * slots)
  cost = costs.rollout(cfg, p.model_cfg, chip, p.sample_mesh.size, calls, call_prompts, phases, weight_bytes,
                       kv_per_row_slot)
  return _compile_sampler("rollout", smp, gen_params, cost), gen_params, cache


def eval_program(cfg: ml_collections.ConfigDict, p: Pieces, gen_params: nnx.State) -> Program | None:
  """The compiled generate of the trainer's periodic eval (run/assemble.py's make_evaluate: a Completer on
  the sampling mesh), for its widest calls: eval.samples rows per prompt when it samples, else greedy; None
  when eval is off. Not part of a step: no FLOPs or roofline."""
  if not (cfg.eval.every and cfg.data.eval):
    return None
  samples = max(1, cfg.eval.samples)
  rollout_cfg = completions.sampler_config(cfg, p.sample_mesh, samples, greedy=cfg.eval.samples == 0)
  smp = engine.make_sampler(p.model, rollout_cfg, _eos(p.model_cfg), 0, mesh=p.sample_mesh)
  return _compile_sampler("eval", smp, gen_params, None)


def build(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device], chip: Chip) -> Plan:
  """Compiles the train step and the rollout of `cfg` for `devices` (validate the config first)."""
  p = pieces(cfg, devices)
  train, optimizer_bytes = train_program(cfg, p, chip)
  rollout, gen_params, cache = rollout_program(cfg, p, chip)
  return Plan(target="", chip=chip, devices=len(devices), shared=p.sample_mesh is p.train_mesh,
              params_bytes=_device_bytes(p.params), optimizer_bytes=optimizer_bytes,
              generator_params_bytes=_device_bytes(gen_params), kv_cache_bytes=_device_bytes((cache.k, cache.v)),
              attention=p.model_cfg.attention, train=train, rollout=rollout, eval=eval_program(cfg, p, gen_params))


def _cache(model_cfg: ModelConfig, rows: int, slots: int, mesh: Mesh) -> kv_cache.KVCache:
  """The KV cache of `rows` rows and `slots` slots, abstract and sharded as the sampler lays it out."""
  shapes = jax.eval_shape(lambda: kv_cache.init_cache(model_cfg, rows, slots))
  axes = kv_cache.cache_axes(model_cfg.num_layers)
  place = lambda x, axes_x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                 sharding=sharding.logical_sharding(axes_x, x.shape, mesh))
  return jax.tree.map(place, shapes, axes)  # each leaf of `shapes` takes its tuple of axis names


def _gib(n: float) -> str:
  return f"{n / GiB:14.3f}"


def describe(plan: Plan, cfg: ml_collections.ConfigDict) -> str:
  """The plan as a table, one column per program and one for the most a run holds at once."""
  chip, hbm = plan.chip, plan.chip.hbm_bytes
  both = plan.both_bytes()
  rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
  fit = lambda n, error=None: "fits" if n <= hbm and not error else "DOES NOT FIT"
  programs = plan.programs()
  attention = (f"{cfg.model.attention} ({plan.attention})" if cfg.model.attention != plan.attention
               else plan.attention)
  lines = [f"plan for {plan.target}: {plan.devices} x {chip.name}, {hbm / GiB:.1f} GiB HBM each"
           + (f", peak {chip.peak_flops / 1e12:.0f} TFLOP/s" if chip.peak_flops else ""),
           f"  model: param_dtype {cfg.model.param_dtype}, dtype {cfg.model.dtype}, attention {attention}, "
           f"remat {cfg.model.remat}; {plan.devices} devices, "
           f"train and rollout {'on the same devices' if plan.shared else 'on separate devices'}",
           f"  train step: {cfg.train.micro_batches} micro-batches of {rows // cfg.train.micro_batches} rows; rollout: "
           + (f"continuous engine, {cfg.rollout.slots or 'rollout.kv_memory_mb'} slots per data shard"
              if cfg.rollout.engine == "continuous" else f"static, {cfg.rollout.micro_batches} call(s)")
           + f", {cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} "
           f"samples in all, {cfg.rollout.max_prompt_len} + {cfg.rollout.max_new_tokens} tokens"
           + (f"; eval: {cfg.eval.batch_size} prompts x {max(1, cfg.eval.samples)} per call" if plan.eval else ""),
           f"  GiB per device: parameters {_gib(plan.params_bytes).strip()}, optimizer state "
           f"{_gib(plan.optimizer_bytes).strip()}, generator copy {_gib(plan.generator_params_bytes).strip()}, "
           f"KV cache {_gib(plan.kv_cache_bytes).strip()}",
           f"  {'GiB per device':24s}" + "".join(f"{p.name:>14s}" for p in programs) + f"{'both':>14s}"]
  for label, attr in (("arguments", "argument_bytes"), ("outputs", "output_bytes"), ("temporaries", "temp_bytes"),
                      ("total", "total_bytes")):
    row = f"  {label:24s}" + "".join(_gib(getattr(p, attr)) for p in programs)
    lines.append(row + (_gib(both) if attr == "total_bytes" else ""))
  learner = "max(train_step, eval + training state)" if plan.eval else "train_step"
  lines.append(f"  {'':24s}" + "".join(f"{fit(p.total_bytes, p.error):>14s}" for p in programs) + f"{fit(both):>14s}"
               + (f"   (both: {learner} + rollout + one published generator copy)" if plan.shared
                  else "   (both: eval + rollout + one published generator copy, on the rollout devices)"))
  for p in programs:
    if p.error:
      lines.append(f"  {p.name}: XLA refused it: {p.error}")
  na = f"{'n/a':>14s}"
  for label, value in (("compile s", lambda p: f"{p.compile_s:14.1f}"),
                       ("model TFLOP/step", lambda p: f"{p.cost.model_flops / 1e12:14.1f}"),
                       ("executed TFLOP/step", lambda p: f"{p.cost.executed_flops / 1e12:14.1f}"),
                       ("XLA TFLOP/dev (1 trip)", lambda p: f"{p.xla_flops / 1e12:14.3f}"),
                       ("roofline s/step", lambda p: f"{p.cost.seconds:14.2f}" if p.cost.seconds else na),
                       ("MFU at roofline", lambda p: f"{p.cost.mfu():14.1%}" if p.cost.seconds else na)):
    every_program = label in ("compile s", "XLA TFLOP/dev (1 trip)")
    lines.append(f"  {label:24s}" + "".join(value(p) if every_program or p.cost else na for p in programs))
  return "\n".join(lines)


def to_json(plan: Plan) -> dict[str, Any]:
  out = dataclasses.asdict(plan)
  out["chip"] = dataclasses.asdict(plan.chip)
  out["both_bytes"], out["fits"] = plan.both_bytes(), plan.fits()
  for name in ("train", "rollout"):
    out[name]["cost"]["mfu"] = getattr(plan, name).cost.mfu()
  return out


def plan_for_target(cfg: ml_collections.ConfigDict, target_name: str) -> Plan:
  """Validates `cfg` for the target's devices (all but the checkpoint's presence) and builds its plan."""
  target = targets.target(target_name)
  if len({d.process_index for d in target.devices}) > 1:
    raise ConfigError(f"{target_name}: the plan compiles for one host; this topology spans several")
  checked = copy.deepcopy(cfg)
  if not os.path.isfile(os.path.join(cfg.model.hf_path, "config.json")):
    with checked.unlocked():
      checked.model.hf_path = ""  # not downloaded: the plan needs no weights
  validation.validate(checked, target.devices, num_processes=1)
  plan = build(checked, target.devices, target.chip)
  plan.target = target.name
  return plan


def device_memory(device: jax.Device) -> int | None:
  """The bytes XLA may allocate on `device`, or None where the backend has no such limit (CPU: host RAM)."""
  return (device.memory_stats() or {}).get("bytes_limit")


def check_fits(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device], hbm_bytes: int) -> Plan:
  """train.py's check, before it loads weights: the plan of `cfg` on a run's own `devices`, each with
  `hbm_bytes` (`device_memory`); raises ConfigError with the plan's numbers when it does not fit."""
  chip = Chip(devices[0].device_kind, hbm_bytes, None, None)
  plan = build(cfg, devices, chip)
  plan.target = f"this host ({len(devices)} x {devices[0].device_kind})"
  if not plan.fits():
    raise ConfigError(f"config: the run does not fit in device memory; lower the batch (train.micro_batches, "
                      f"rollout.prompts_per_step) or its length, or add remat:\n{describe(plan, cfg)}")
  return plan


def main(cfg: ml_collections.ConfigDict, target_name: str, json_path: str = "") -> int:
  """The command line's work: prints the plan; returns the exit status (0 fits, 1 does not, 2 config error)."""
  targets.configure_process(target_name)
  try:
    plan = plan_for_target(cfg, target_name)
  except (ConfigError, ValueError) as e:
    print(f"plan: {e}", file=sys.stderr)
    return 2
  print(describe(plan, cfg), flush=True)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(to_json(plan), f, indent=2)
  return 0 if plan.fits() else 1


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  from asympo_jax.run import config as config_lib

  _CONFIG = config_flags.DEFINE_config_file("config", None, "a config file (configs/*.py)", lock_config=True)
  _TARGET = flags.DEFINE_string("target", None, "tpu:<version>:<topology> (tpu:v5p:2x2x1) or cpu:N")
  _JSON = flags.DEFINE_string("json", "", "also write the plan to this file")
  flags.mark_flags_as_required(["config", "target"])
  app.run(lambda _: sys.exit(main(_CONFIG.value, _TARGET.value, _JSON.value)), flags_parser=config_lib.parse_flags)
