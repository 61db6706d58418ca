"""Evaluates checkpoints on math benchmarks: greedy accuracy, avg@k and pass@k, as JSON and curves.

    python eval.py --checkpoint=path/to/hf_dir --benchmarks=gsm8k_test,math500_test
    python eval.py --run=runs/a --run=runs/b --benchmarks=math500_test --samples=8 --out_dir=runs/eval

--checkpoint takes an HF directory (config.json + safetensors + tokenizer) or an orbax step directory
(<run>/checkpoints/<step>); --run takes every checkpoint of a run. Results accumulate in <out_dir>/<name>.json
(the benchmark's short name, see asympo_jax/data/datasets.py), one record per (run, step), and <name>.png plots
them against training step, one line per run; each checkpoint's outputs go to
<out_dir>/samples/<name>/<run>_<step>.jsonl. The trainer's periodic eval is the same (evaluation/suite.py).
The config comes from --config (a config file), else from the run's checkpoint (keys the run predates take
their defaults), else base_config(); the flags below override its eval keys. The model is built as the run
built it (dtypes, model.attention, remat). Sampling runs on every device (a data mesh, parameters replicated); each
record names that mesh. eval.batch_size is rounded up to a multiple of the device count.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import app, flags
from flax import nnx
from jax.sharding import Mesh
from ml_collections import config_flags

from asympo_jax.train import checkpoint
from asympo_jax.data import datasets as data
from asympo_jax.evaluation import scores as evaluation
from asympo_jax.evaluation import suite
from asympo_jax.model import architecture, hf_io
from asympo_jax.rollout import rewards
from asympo_jax.common import sharding
from asympo_jax.run import config as config_lib
from asympo_jax.rollout.completions import Completer

config_flags.DEFINE_config_file("config", None, "config file (default: the run's config, else base_config())")
flags.DEFINE_multi_string("checkpoint", [], "an HF directory or an orbax step directory")
flags.DEFINE_multi_string("run", [], "a run directory: every checkpoint in it")
flags.DEFINE_string("benchmarks", None, "dataset specs, comma-separated (default: config.data.eval)")
flags.DEFINE_string("out_dir", None, "results directory (default: config.eval.out_dir, else <workdir>/eval)")
flags.DEFINE_string("run_name", None, "the run name of --checkpoint results (default: its parent directory)")
flags.DEFINE_integer("samples", None, "samples per problem for avg@k / pass@k (default: config.eval.samples)")
flags.DEFINE_integer("max_problems", None,
                     "first N problems of each benchmark (default: config.data.max_eval_problems)")
flags.DEFINE_integer("max_new_tokens", None, "(default: config.rollout.max_new_tokens)")
flags.DEFINE_integer("max_prompt_len", None, "(default: config.rollout.max_prompt_len)")
flags.DEFINE_integer("batch_size", None, "prompts per generate call (default: config.eval.batch_size)")
flags.DEFINE_float("temperature", None, "of the samples (default: config.eval.temperature)")
flags.DEFINE_string("template", None, "plain | chat (default: config.data.template)")
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  run: str
  step: int
  path: str
  kind: str  # a key of LOADERS


def _trailing_int(name: str) -> int:
  match = re.search(r"(\d+)$", name)
  return int(match.group(1)) if match else 0


def find_checkpoint(path: str, run_name: str | None) -> Checkpoint:
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  if os.path.exists(os.path.join(path, "config.json")):
    return Checkpoint(run_name or os.path.basename(parent), _trailing_int(os.path.basename(path)), path, "hf")
  if os.path.basename(parent) == "checkpoints" and os.path.basename(path).isdigit():
    return Checkpoint(run_name or os.path.basename(os.path.dirname(parent)), int(os.path.basename(path)), path,
                      "orbax")
  raise app.UsageError(f"{path}: neither an HF directory (no config.json) nor an orbax step directory "
                       "(<run>/checkpoints/<step>)")


def run_checkpoints(run_dir: str) -> list[Checkpoint]:
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
  if not steps:
    raise app.UsageError(f"{run_dir}: no checkpoints under {ckpt_dir}")
  name = os.path.basename(os.path.abspath(run_dir))
  return [Checkpoint(name, s, os.path.join(ckpt_dir, str(s)), "orbax") for s in steps]


def run_config(ckpt: Checkpoint) -> ml_collections.ConfigDict | None:
  """The config an orbax checkpoint was trained with (None for an HF directory)."""
  if ckpt.kind != "orbax":
    return None
  checkpointer = checkpoint.Checkpointer(os.path.dirname(os.path.dirname(ckpt.path)), keep=1)
  try:
    return ml_collections.ConfigDict(checkpointer.restore_meta(ckpt.step)["config"])
  finally:
    checkpointer.close()


def model_options(cfg: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
  """The run's model options (dtypes, attention, remat), model.attention = auto resolved for the mesh's
  devices, so eval holds the memory the run's own eval did."""
  return architecture.options(cfg.model, mesh.devices.flat[0].platform)


def load_hf(ckpt: Checkpoint, cfg: ml_collections.ConfigDict, mesh: Mesh) -> tuple[Any, Any]:
  return hf_io.load_model(ckpt.path, mesh, **model_options(cfg, mesh)), hf_io.load_tokenizer(ckpt.path)


def load_orbax(ckpt: Checkpoint, cfg: ml_collections.ConfigDict, mesh: Mesh) -> tuple[Any, Any]:
  """The run's model (architecture and tokenizer from config.model.hf_path) with the step's trained params,
  read alone from the checkpoint's `state` item (state["train"].params), so the optimizer state and the
  pending rollout batches are never loaded."""
  if not cfg.model.hf_path:
    raise app.UsageError(f"{ckpt.path}: the run's config.model.hf_path is empty, so its architecture is unknown")
  model = hf_io.load_model(cfg.model.hf_path, mesh, **model_options(cfg, mesh))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  target = {"train": {"params": checkpoint.abstract(params)}}
  restored = ocp.PyTreeCheckpointer().restore(  # restore_args: onto `mesh`, not the devices the run saved from
      os.path.join(ckpt.path, "state"), args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  return nnx.merge(graphdef, restored["train"]["params"], rest), hf_io.load_tokenizer(cfg.model.hf_path)


LOADERS: dict[str, Callable[[Checkpoint, ml_collections.ConfigDict, Mesh], tuple[Any, Any]]] = {
    "hf": load_hf, "orbax": load_orbax}


def configure(ckpt: Checkpoint) -> ml_collections.ConfigDict:
  """--config, else the run's config, else base_config(); then the flags' overrides."""
  if FLAGS.config is not None:
    config_lib.validate_keys(FLAGS.config)
    cfg = FLAGS.config
  else:
    saved = run_config(ckpt)
    cfg = config_lib.with_defaults(saved) if saved is not None else config_lib.base_config()
  overrides = {"eval.samples": FLAGS.samples, "eval.batch_size": FLAGS.batch_size,
               "eval.temperature": FLAGS.temperature, "data.max_eval_problems": FLAGS.max_problems,
               "rollout.max_new_tokens": FLAGS.max_new_tokens, "rollout.max_prompt_len": FLAGS.max_prompt_len,
               "data.template": FLAGS.template, "data.eval": FLAGS.benchmarks, "eval.out_dir": FLAGS.out_dir}
  cfg = cfg.copy_and_resolve_references()
  for key, value in overrides.items():
    if value is not None:
      section, name = key.split(".")
      cfg[section][name] = value
  data.validate(cfg.data)
  evaluation.validate(cfg.eval)
  if not data.split_specs(cfg.data.eval):
    raise app.UsageError("no benchmarks: give --benchmarks or set config.data.eval")
  return cfg


def evaluate_checkpoint(ckpt: Checkpoint, pool: rewards.RewardPool, mesh: Mesh) -> None:
  cfg = configure(ckpt)
  model, tokenizer = LOADERS[ckpt.kind](ckpt, cfg, mesh)
  complete = Completer(model, tokenizer, cfg, seed=cfg.seed, mesh=mesh)
  scored = pool.counters.copy()

  def details() -> dict[str, Any]:
    nonlocal scored
    outcomes, scored = pool.counters - scored, pool.counters.copy()
    return {"checkpoint": ckpt.path, "mesh": dict(mesh.shape), "prompts_truncated": complete.truncated,
            "outcomes": dict(outcomes)}

  summaries = suite.evaluate(suite.load_sets(cfg), complete, pool.score, cfg.eval.samples, run=ckpt.run,
                             step=ckpt.step, out_dir=suite.results_dir(cfg), details=details, keep_outputs=True)
  for name, summary in summaries.items():
    print(json.dumps({"run": ckpt.run, "step": ckpt.step, "eval_set": name, **summary}))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  checkpoints = [find_checkpoint(p, FLAGS.run_name) for p in FLAGS.checkpoint]
  checkpoints += [c for r in FLAGS.run for c in run_checkpoints(r)]
  if not checkpoints:
    raise app.UsageError("give --checkpoint and/or --run")
  cfg = configure(checkpoints[0])
  # Every device samples its share of each batch, the parameters replicated: whatever mesh a run trained on,
  # this one fits any machine the model fits one device of.
  mesh = sharding.data_mesh(jax.devices())
  with rewards.RewardPool(cfg.data.reward_workers, cfg.data.reward_timeout_s) as pool:
    for ckpt in checkpoints:
      evaluate_checkpoint(ckpt, pool, mesh)


if __name__ == "__main__":
  from asympo_jax.common import cpu
  cpu.tune_malloc()
  app.run(main, flags_parser=config_lib.parse_flags)
