"""bfloat16 against float32 compute (model.dtype) on the `small` train step and on generation, in one run.

    python -m benchmarks.precision [--configs small] [--steps 2] [--rounds 2] [--workloads train_step,generate]

Workloads (docs/design.md §10): the train step (64 sequences of 32 + 64 tokens, asympo, one AdamW update, one
device) and generation (64 prompts of 32 tokens, 64 new tokens, temperature 1, one device), each with float32
master weights and float32 or bfloat16 compute. The sampler gets the bfloat16 copy of the weights a run
publishes to it.

Each (workload, dtype) runs in a process of its own, so its peak resident memory (ru_maxrss) is its own; the
rounds alternate the order of the dtypes (a shared machine's speed drifts). Reported per dtype: the best
tokens/s over the rounds, the spread of peak RSS, and the compiled program's own bytes (XLA's
memory_analysis of the loss-and-gradient program, resp. the generate program: arguments, outputs, temporaries).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

DTYPES = ("float32", "bfloat16")


def _train_step(path: str, dtype: str, steps: int) -> dict[str, float]:
  import jax
  from flax import nnx

  from asympo_jax.common import sharding
  from asympo_jax.model import hf_io
  from asympo_jax.train import step as train_step
  from benchmarks import train_step as train_bench
  from benchmarks import workloads

  mesh = sharding.data_mesh(jax.devices()[:1])
  one = train_bench.jax_step(path, 0, mesh, dtype=dtype)
  seconds = workloads.best_seconds(one, steps)
  # The loss-and-gradient program alone, compiled again for its memory figures.
  cfg, model = train_bench.step_config(0), hf_io.load_model(path, mesh, dtype=dtype)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  spec = train_step.TrainSpec.from_config(cfg)
  batch = jax.device_put(workloads.train_batch(model.cfg.vocab_size), train_step.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    compiled = jax.jit(lambda p, b: train_step.loss_and_grads(spec, graphdef, rest, p, b)).lower(params, batch).compile()
  return {"seconds": seconds, "tokens_per_s": workloads.B * workloads.T / seconds, **_memory(compiled)}


def _generate(path: str, dtype: str, steps: int) -> dict[str, float]:
  import jax
  from flax import nnx

  from asympo_jax.common import sharding
  from asympo_jax.model import hf_io
  from asympo_jax.model.decoder import cast_params
  from asympo_jax.rollout.sampler import Sampler
  from asympo_jax.run import config as config_lib
  from benchmarks import workloads

  mesh = sharding.data_mesh(jax.devices()[:1])
  cfg = config_lib.base_config().rollout
  cfg.update(dict(prompts_per_step=workloads.PROMPTS, group_size=1, max_prompt_len=workloads.PROMPT_LEN,
                  max_new_tokens=workloads.NEW_TOKENS, temperature=1.0))
  model = hf_io.load_model(path, mesh, dtype=dtype)
  sampler = Sampler(model, cfg, eos_ids=[], pad_id=0, mesh=mesh)
  state = cast_params(nnx.state(model), dtype)  # what run.make_transfer publishes to the sampler
  prompts = workloads.generation_prompts(model.cfg.vocab_size).tolist()
  calls = iter(range(1_000_000))
  seconds = workloads.best_seconds(lambda: sampler.generate(state, prompts, seed=0, step=next(calls)), steps)
  return {"seconds": seconds, "tokens_per_s": workloads.PROMPTS * workloads.NEW_TOKENS / seconds,
          **_memory(sampler.lower(state).compile())}


def _memory(compiled) -> dict[str, int]:
  """XLA's own bytes of a compiled program: arguments, outputs, temporaries (the KV cache is one)."""
  memory = compiled.memory_analysis()
  return {"argument_bytes": memory.argument_size_in_bytes, "output_bytes": memory.output_size_in_bytes,
          "temp_bytes": memory.temp_size_in_bytes}


WORKLOADS = {"train_step": _train_step, "generate": _generate}
PROGRAMS = {"train_step": "loss-and-gradient program", "generate": "generate program"}


def _child(workload: str, path: str, dtype: str, steps: int) -> None:
  result = WORKLOADS[workload](path, dtype, steps)
  result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(json.dumps(result))


def _run_child(workload: str, path: str, dtype: str, steps: int) -> dict[str, float]:
  done = subprocess.run([sys.executable, "-m", "benchmarks.precision", "--child", workload, "--path", path,
                         "--dtype", dtype, "--steps", str(steps)], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if done.returncode != 0:
    raise RuntimeError(f"{workload} {dtype} failed:\n{done.stderr[-4000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
  from benchmarks import workloads

  ap = argparse.ArgumentParser()
  ap.add_argument("--configs", default="small")
  ap.add_argument("--workloads", default="train_step,generate")
  ap.add_argument("--steps", type=workloads.positive_int, default=2, help="timed calls per process (best counts)")
  ap.add_argument("--rounds", type=workloads.positive_int, default=2, help="alternations of the two dtypes")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  ap.add_argument("--path", default="", help=argparse.SUPPRESS)
  ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    _child(args.child, args.path, args.dtype, args.steps)
    return
  print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; one JAX CPU device per process")
  for name in args.configs.split(","):
    with tempfile.TemporaryDirectory() as path:
      workloads.write_checkpoint(name, path)
      for workload in args.workloads.split(","):
        best: dict[str, dict[str, float]] = {}
        rss: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
        for i in range(args.rounds):
          for dtype in DTYPES if i % 2 == 0 else DTYPES[::-1]:
            r = _run_child(workload, path, dtype, args.steps)
            print(f"{name} {workload} round {i + 1} {dtype}: {r['tokens_per_s']:.0f} tokens/s, peak RSS "
                  f"{r['peak_rss_bytes'] / 2**30:.2f} GiB, load average {os.getloadavg()[0]:.1f}", flush=True)
            rss[dtype].append(r["peak_rss_bytes"] / 2**30)
            if dtype not in best or r["tokens_per_s"] > best[dtype]["tokens_per_s"]:
              best[dtype] = r
        for dtype, r in best.items():
          compiled = "" if "temp_bytes" not in r else (
              f"; compiled {PROGRAMS[workload]}: arguments {r['argument_bytes'] / 2**20:.0f} MiB, outputs "
              f"{r['output_bytes'] / 2**20:.0f} MiB, temporaries {r['temp_bytes'] / 2**20:.0f} MiB")
          # The heap's peak depends on when freed blocks go back to the OS: give the spread, not one round.
          print(f"{name} {workload} {dtype:8s} best {r['tokens_per_s']:8.0f} tokens/s ({r['seconds']:.3f} s), "
                f"peak RSS {min(rss[dtype]):.2f}-{max(rss[dtype]):.2f} GiB over the rounds{compiled}", flush=True)
        ratio = best["bfloat16"]["tokens_per_s"] / best["float32"]["tokens_per_s"]
        print(f"{name} {workload} bfloat16 / float32 tokens/s: {ratio:.2f}x", flush=True)


if __name__ == "__main__":
  from asympo_jax.common import cpu

  cpu.tune_malloc()  # as the other benchmarks and train.py run
  main()
