"""Time of one decode step of the rollout engine and of the static sampler at the same number of live rows, by
cache length: what a step costs apart from the rows it serves (docs/benchmarks.md, long-tailed generation).

    python -m benchmarks.slot_step [--size tiny] [--slots 32] [--new-tokens 128,512]

A random-init model, prompts of 32 tokens, temperature 1 and no EOS, so every row runs to max_new_tokens. The
engine gets S + 1 rows for S slots, so it runs its slot loop (S rows fit one static wave): 2 x max_new_tokens
steps of S live slots, then of one. The static sampler gets S rows: max_new_tokens steps. Each is timed on its
second call (the first compiles), and the time per step is printed.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from flax import nnx

from asympo_jax.common import cpu
from asympo_jax.model import scratch
from asympo_jax.model.decoder import create_model
from asympo_jax.rollout.engine import Engine
from asympo_jax.rollout.sampler import Sampler
from asympo_jax.run import config as config_lib

PROMPT_LEN = 32


def seconds_per_step(kind: type, model, rows: int, slots: int, new_tokens: int, steps: int) -> float:
  cfg = config_lib.base_config().rollout
  cfg.update(dict(prompts_per_step=rows, group_size=1, max_prompt_len=PROMPT_LEN, max_new_tokens=new_tokens,
                  temperature=1.0, engine="continuous", slots=slots))
  prompts = np.random.default_rng(0).integers(3, model.cfg.vocab_size, (rows, PROMPT_LEN)).tolist()
  sampler = kind(model, cfg, eos_ids=[], pad_id=0)
  state = nnx.state(model)
  sampler.generate(state, prompts, seed=0, step=0)
  start = time.perf_counter()
  sampler.generate(state, prompts, seed=0, step=1)
  return (time.perf_counter() - start) / steps


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", default="tiny", choices=sorted(scratch.SIZES))
  ap.add_argument("--slots", type=int, default=32)
  ap.add_argument("--new-tokens", default="128,512", help="max_new_tokens values, comma-separated")
  args = ap.parse_args()
  model = create_model(scratch.model_config(args.size), seed=0)
  print(f"{jax.default_backend()} x{jax.device_count()} ({os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}), JAX {jax.__version__}; {args.size}, {args.slots} live rows, prompts of "
        f"{PROMPT_LEN} tokens")
  for n in map(int, args.new_tokens.split(",")):
    engine = seconds_per_step(Engine, model, args.slots + 1, args.slots, n, 2 * n)
    static = seconds_per_step(Sampler, model, args.slots, args.slots, n, n)
    print(f"max_new_tokens {n:5d}: engine {1e3 * engine:7.2f} ms/step, static sampler {1e3 * static:7.2f} ms/step",
          flush=True)


if __name__ == "__main__":
  cpu.tune_malloc()
  main()
