"""Wall time per RL step at staleness k = 0, 1, 2: generation, training, and the learner's wait for data.

Workloads of docs/design.md §10 on the `tiny` model (random init, float32): each step samples 16 prompts x 4
responses of 32 + 64 tokens (no EOS, so every response is 64 tokens) and trains one asympo step with AdamW on
those 64 x 96 tokens. The rollout generator (asympo_jax/rollout/generator.py, fixed_lag) samples on its own
thread, on the same CPU cores as the learner, so overlap is time-sliced: while both run they share the cores.

Per k it prints the means over the timed steps (after one warm-up step that compiles both sides):
  generate    time/generate: the generator thread's sampling + scoring time per batch
  train       the learner's train step (dispatch to result)
  wait        time/wait_for_data: the learner blocked on the generator
  step        learner wall time per step (= train + wait + publish)
  hidden      the share of generation the learner did not wait for: 1 - wait / generate

    python -m benchmarks.async_overlap.py [--steps 6] [--config tiny]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from asympo_jax.run import config as config_lib
from benchmarks import workloads
from asympo_jax.model import hf_io
from asympo_jax.common import cpu
from asympo_jax.train import optim
from asympo_jax.rollout import sampler
from asympo_jax.common import sharding
from asympo_jax.train import step as train_step
from asympo_jax.rollout.generator import RolloutGenerator, copy_params
from asympo_jax.rollout.batch import make_build_batch

PROMPTS, GROUP, PROMPT_LEN, NEW_TOKENS = 16, 4, 32, 64


def run(path: str, k: int, steps: int) -> dict[str, float]:
  cfg = config_lib.base_config()
  cfg.rollout.update(dict(prompts_per_step=PROMPTS, group_size=GROUP, max_prompt_len=PROMPT_LEN,
                          max_new_tokens=NEW_TOKENS, temperature=1.0, staleness=k, mode="fixed_lag"))
  cfg.optim.lr = 1e-5
  mesh = sharding.data_mesh(jax.devices()[:1])
  model = hf_io.load_model(path, mesh)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, schedule = optim.make_optimizer(cfg.optim, total_steps=steps + 1)
  state, shardings = train_step.init_state(params, tx, mesh)
  spec = train_step.TrainSpec.from_config(cfg)
  step_fn = train_step.make_train_step(spec, graphdef, rest, tx, schedule, mesh, shardings)
  smp = sampler.Sampler(model, cfg.rollout, eos_ids=[], pad_id=0)
  vocab = model.cfg.vocab_size

  def prompts_for_step(step):
    rng = np.random.default_rng(step)
    return rng.integers(3, vocab, (PROMPTS, PROMPT_LEN)).tolist(), [0] * PROMPTS

  def reward(texts, targets):  # any reward with spread inside groups, so advantages are not all zero
    return np.array([hash(t) % 2 for t in texts], np.float32)

  build = make_build_batch(smp, prompts_for_step, lambda ids: " ".join(map(str, ids)), reward, seed=0)
  rows = train_step.batch_sharding(mesh)
  totals = {"generate": 0.0, "train": 0.0, "wait": 0.0, "step": 0.0}
  with RolloutGenerator(build, state.params, cfg.rollout, steps + 1, transfer=copy_params) as gen:
    for step in range(steps + 1):  # step 0 compiles both sides and is not counted
      t0 = time.perf_counter()
      batch, metrics = gen.get(step)
      t1 = time.perf_counter()
      state, out = step_fn(state, jax.device_put(batch, rows))
      jax.block_until_ready(out)
      t2 = time.perf_counter()
      gen.publish(state.params, step + 1)
      t3 = time.perf_counter()
      if step > 0:
        totals["generate"] += metrics["time/generate"]
        totals["train"] += t2 - t1
        totals["wait"] += metrics["time/wait_for_data"]
        totals["step"] += t3 - t0
  return {name: value / steps for name, value in totals.items()}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=6)
  ap.add_argument("--config", default="tiny")
  args = ap.parse_args()
  print(f"{jax.default_backend()} ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}), "
        f"JAX {jax.__version__}; model {args.config}; {PROMPTS} prompts x {GROUP} responses, "
        f"{PROMPT_LEN} + {NEW_TOKENS} tokens; means over {args.steps} steps after one warm-up step")
  with tempfile.TemporaryDirectory() as path:
    workloads.write_checkpoint(args.config, path)
    print(f"{'k':>2} {'generate s':>11} {'train s':>8} {'wait s':>7} {'step s':>7} {'hidden':>7}")
    for k in (0, 1, 2):
      r = run(path, k, args.steps)
      hidden = max(0.0, 1 - r["wait"] / r["generate"])  # k = 0 waits for all of it (plus hand-over time)
      print(f"{k:>2} {r['generate']:11.3f} {r['train']:8.3f} {r['wait']:7.3f} {r['step']:7.3f} {hidden:7.0%}",
            flush=True)


if __name__ == "__main__":
  cpu.tune_malloc()
  main()
