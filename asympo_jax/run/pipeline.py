"""What train.py runs: an optional scratch model, an optional supervised warm start, RL, then a summary.

Each phase leaves its result in the run directory, so a killed run resumes where it stopped:
  <workdir>/scratch_model     tokenizer + random model (model.scratch), HF format
  <workdir>/warm_start/       the warm start's own run (checkpoints, metrics); its final params in hf/
  <cache_dir>/<key>/          with warm_start.cache_dir: a copy of that hf/, which every later run with the
                              same warm start (same `warm_start_key`) takes instead of building its own
  <workdir>/                  the RL run (checkpoints, metrics.jsonl, eval/ curves), then summary.json

The warm start is the same trainer loop and train step as RL with the `nll` objective, fed gold answers
(asympo_jax/rollout/supervised.py) instead of samples: one prompt per row, at the learning rate of config.warm_start.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.experimental import multihost_utils

from asympo_jax.data import datasets as data
from asympo_jax.model import hf_io
from asympo_jax.train import metrics
from asympo_jax.model import architecture as model_config
from asympo_jax.data import prompts
from asympo_jax.run import assemble as run
from asympo_jax.run import plan
from asympo_jax.model import scratch
from asympo_jax.rollout import supervised
from asympo_jax.train import loop as trainer
from asympo_jax.train import objectives
from asympo_jax.common.checks import check

SCRATCH_DIR, WARM_DIR, EXPORT_DIR, SUMMARY_NAME = "scratch_model", "warm_start", "hf", "summary.json"
ACCURACY_SUFFIX = "/greedy_accuracy"
TOKENIZER_TEXTS = 4000  # training problems the scratch tokenizer is fitted on


def validate(cfg: ml_collections.ConfigDict) -> None:
  """The checks of train.py's run beyond validation.validate (which also serves runs whose model is built in
  code): where the model comes from, and the warm start."""
  check(bool(cfg.model.hf_path) != bool(cfg.model.scratch), "model.hf_path",
        "set exactly one of model.hf_path (a Hugging Face directory) and model.scratch (a size to build)")
  check(not cfg.model.scratch or cfg.model.scratch in scratch.SIZES, "model.scratch",
        f"unknown size {cfg.model.scratch!r}; known: {sorted(scratch.SIZES)}")
  w = cfg.warm_start
  check(isinstance(w.steps, int) and w.steps >= 0, "warm_start.steps", f"must be an integer >= 0, got {w.steps!r}")
  check(w.steps == 0 or w.lr > 0, "warm_start.lr", f"must be > 0, got {w.lr}")
  check(w.steps == 0 or 0 <= w.warmup_steps <= w.steps, "warm_start.warmup_steps",
        f"must be in [0, warm_start.steps={w.steps}], got {w.warmup_steps}")
  check(w.steps == 0 or w.target in supervised.TARGETS, "warm_start.target", f"must be one of {sorted(supervised.TARGETS)}, "
        f"got {w.target!r}")
  check(w.steps == 0 or isinstance(w.cache_dir, str), "warm_start.cache_dir", f"must be a path or \"\", got {w.cache_dir!r}")


def _atomic_dir(path: str, write: Any, every_process: bool) -> str:
  """Writes a directory through a temporary name, so a kill never leaves a half-written one behind.

  `write` runs on process 0 only, or on every process when it holds collectives (it then writes on process
  0 alone itself); the other processes wait for the directory.
  """
  if not os.path.isfile(os.path.join(path, "config.json")):
    tmp = path + ".partial"
    if jax.process_index() == 0:
      shutil.rmtree(tmp, ignore_errors=True)
    if every_process or jax.process_index() == 0:
      write(tmp)
    if jax.process_index() == 0:
      os.replace(tmp, path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"asympo_jax pipeline: {path}")
  return path


def scratch_model(cfg: ml_collections.ConfigDict) -> str:
  """<workdir>/scratch_model: a tokenizer fitted on the training prompts and gold answers, a random model."""
  problems = data.load(cfg.data.train, cfg.data.dir, cfg.data.hub)[:TOKENIZER_TEXTS]
  response = supervised.TARGETS[cfg.warm_start.target]
  texts = prompts.render(cfg.data.template, [p.question for p in problems]) + [response(p) for p in problems]
  write = lambda path: scratch.build(path, cfg.model.scratch, texts, seed=cfg.seed,
                                     param_dtype=cfg.model.param_dtype)
  return _atomic_dir(os.path.join(cfg.workdir, SCRATCH_DIR), write, every_process=False)


def warm_start_config(cfg: ml_collections.ConfigDict, hf_path: str) -> ml_collections.ConfigDict:
  """The warm start's run: nll on gold answers, one row per prompt, the RL batch's row count, no eval."""
  w = copy.deepcopy(cfg)
  with w.unlocked():
    w.workdir = os.path.join(cfg.workdir, WARM_DIR)
    w.model.hf_path, w.model.scratch = hf_path, ""
    w.objective = objectives.config_section()  # the RL objective's keys (say split_grad_norms) stay out
    w.objective.name = "nll"
    w.train.steps = cfg.warm_start.steps
    w.optim.lr, w.optim.warmup_steps = cfg.warm_start.lr, cfg.warm_start.warmup_steps
    w.rollout.prompts_per_step = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    w.rollout.group_size, w.rollout.staleness = 1, 0
    w.rollout.record_behaviour_logprobs = False
    w.eval.every = 0
    w.warm_start.steps = 0  # the warm start has no warm start of its own
  return w


# Sections that a warm start's result does not depend on: where it writes, and what it evaluates and logs.
_NOT_IN_WARM_KEY = ("workdir", "eval", "checkpoint", "metrics")


def warm_start_key(cfg: ml_collections.ConfigDict) -> str:
  """A hash of everything the warm start of `cfg` depends on: its run's config (warm_start_config, where
  the RL objective, staleness and RL learning rate no longer appear) and the model it starts from."""
  w = warm_start_config(cfg, "").to_dict()
  for key in _NOT_IN_WARM_KEY:
    w.pop(key)
  w["warm_start"].pop("cache_dir")
  w["model"].update(hf_path=cfg.model.hf_path, scratch=cfg.model.scratch)
  text = json.dumps(w, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _export(cfg: ml_collections.ConfigDict, result: trainer.Result) -> str:
  """The trained params of `cfg`'s run as a Hugging Face directory <workdir>/hf."""
  def write(path: str) -> None:
    model = hf_io.load_model(cfg.model.hf_path, **model_config.options(cfg.model, jax.default_backend()))
    nnx.update(model, result.state.params)
    hf_io.save_model(model, path, hf_io.load_tokenizer(cfg.model.hf_path))
  return _atomic_dir(os.path.join(cfg.workdir, EXPORT_DIR), write, every_process=True)


def accuracy_keys(records: list[dict[str, Any]]) -> list[str]:
  """The eval greedy-accuracy metrics of a run's records, one per eval set, sorted."""
  return sorted({k for r in records for k in r if k.startswith("eval/") and k.endswith(ACCURACY_SUFFIX)})


def summarize(workdir: str) -> dict[str, Any]:
  """Eval greedy accuracy at the start of RL (step 0) and at the end, per eval set, into summary.json."""
  records = metrics.read_jsonl(workdir)
  keys = accuracy_keys(records)
  summary = {"steps": records[-1]["step"] if records else 0, "eval": {}}
  for key in keys:
    points = [(r["step"], r[key]) for r in records if key in r]
    (first_step, start), (last_step, end) = points[0], points[-1]
    summary["eval"][key] = {"start_step": first_step, "start": start, "end_step": last_step, "end": end,
                            "best": max(v for _, v in points), "gain_points": 100 * (end - start)}
  with open(os.path.join(workdir, SUMMARY_NAME), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def describe(summary: dict[str, Any]) -> str:
  lines = [f"RL summary after {summary['steps']} steps:"]
  for key, s in summary["eval"].items():
    lines.append(f"  {key}: {100 * s['start']:.1f}% at step {s['start_step']} -> {100 * s['end']:.1f}% at step "
                 f"{s['end_step']} ({s['gain_points']:+.1f} points; best {100 * s['best']:.1f}%)")
  return "\n".join(lines)


def check_memory(cfg: ml_collections.ConfigDict) -> None:
  """The plan's memory check of a run on this host's devices, before it loads weights (run/plan.py): a config
  that cannot fit stops here with the plan's numbers, not after the weights are loaded. It compiles both
  programs once more than the run does. Skipped where the devices have no memory limit of their own (CPU: the
  host's RAM, which XLA:CPU's accounting does not bound) and with several processes."""
  limit = plan.device_memory(jax.devices()[0])
  if limit is None or jax.process_count() > 1:
    return
  plan.check_fits(cfg, jax.devices(), limit)


def rl_config(cfg: ml_collections.ConfigDict, hf_path: str) -> ml_collections.ConfigDict:
  """The RL run of `cfg`, starting from the HF directory `hf_path`."""
  rl = copy.deepcopy(cfg)
  with rl.unlocked():
    rl.model.hf_path, rl.model.scratch = hf_path, ""
  return rl


def run_all(cfg: ml_collections.ConfigDict) -> trainer.Result:
  """All phases of `cfg` (validate it first); returns the RL run's result (or the phase a signal stopped)."""
  cached = ""
  if cfg.warm_start.steps and cfg.warm_start.cache_dir:
    cached = os.path.join(cfg.warm_start.cache_dir, warm_start_key(cfg))
  if cached and os.path.isfile(os.path.join(cached, "config.json")):
    hf_path = cached
  else:
    hf_path = cfg.model.hf_path or scratch_model(cfg)
  check_memory(rl_config(cfg, hf_path))  # the warm start has the RL train step's rows and length
  if cfg.warm_start.steps and hf_path != cached:
    warm = warm_start_config(cfg, hf_path)
    export = os.path.join(warm.workdir, EXPORT_DIR)
    if not os.path.isfile(os.path.join(export, "config.json")):
      result = run.run(warm, supervised=True)
      if result.stopped_by_signal:
        return result
      _export(warm, result)
    hf_path = export
    if cached:
      os.makedirs(cfg.warm_start.cache_dir, exist_ok=True)
      hf_path = _atomic_dir(cached, lambda tmp: shutil.copytree(export, tmp), every_process=False)
  rl = rl_config(cfg, hf_path)
  result = run.run(rl)
  if not result.stopped_by_signal and jax.process_index() == 0 and cfg.eval.every:
    print(describe(summarize(cfg.workdir)), flush=True)
  return result
