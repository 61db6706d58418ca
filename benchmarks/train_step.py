"""Train-step throughput and MFU on the train workload of docs/design.md §10, beside a PyTorch reference step.

    python -m benchmarks.train_step [--configs tiny,small] [--steps 3] [--rounds 2] [--chunk 0] [--cpu-devices 1]

Workload: 64 sequences of 96 tokens (32 prompt + 64 response), asympo loss, one AdamW update, float32,
one micro-batch; ours on one device and, with `--cpu-devices N`, also on a data mesh over N CPU devices.
The two layouts' heaps add up (about 10 + 9 GB on `small`), so on a 24 GiB machine give `--cpu-devices 2`
with `--configs tiny` only. The reference is transformers' PyTorch model of the same architecture and
weights with the same loss, clipping and torch.optim.AdamW, 2 threads, in its own process
(benchmarks/torch_reference.py). Each side runs `--steps` steps after a warm-up step, in `--rounds`
alternations of the two sides, and reports its best step.

FLOPs per step: workloads.train_step_flops (forward + backward = 3 x forward, LM head included on the 64
response columns, the ones the loss scores). Our step computes the LM head on those columns only; the
reference, as transformers' forward does by default, computes logits for every column, which is work its
MFU does not count. MFU divides the achieved FLOP/s by the best f32 matmul rate measured in this run
(2048^3 jnp.dot and torch.mm, each in its own process; whichever is faster).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Callable

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from asympo_jax.model import hf_io
from asympo_jax.common import cpu
from asympo_jax.train import optim
from asympo_jax.train import step as train_step
from asympo_jax.run.config import base_config
from benchmarks import workloads


def step_config(chunk: int) -> ml_collections.ConfigDict:
  """The run config of the workload's step; `chunk` is train.logprob_chunk."""
  cfg = base_config()
  cfg.rollout.prompts_per_step, cfg.rollout.group_size = workloads.B // workloads.G, workloads.G
  cfg.rollout.max_prompt_len, cfg.rollout.max_new_tokens = workloads.PROMPT, workloads.RESPONSE
  cfg.optim.lr, cfg.optim.clip_norm = 1e-5, 1.0
  cfg.train.logprob_chunk = chunk
  return cfg


def jax_step(path: str, chunk: int, mesh: Mesh, dtype: str = "float32") -> Callable[[], None]:
  """One call = one of our jitted train steps on `mesh` on the workload batch, blocking until it is done (the
  first call compiles); float32 master weights, `dtype` compute (model.dtype)."""
  cfg = step_config(chunk)
  model = hf_io.load_model(path, mesh, dtype=dtype)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, schedule = optim.make_optimizer(cfg.optim, total_steps=100)
  state, shardings = train_step.init_state(params, tx, mesh)
  spec = train_step.TrainSpec.from_config(cfg)
  step = train_step.make_train_step(spec, graphdef, rest, tx, schedule, mesh, shardings)
  batch = jax.device_put(workloads.train_batch(model.cfg.vocab_size), train_step.batch_sharding(mesh))
  holder = [state]

  def one():
    holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready(metrics)

  return one


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--configs", default="tiny,small")
  parser.add_argument("--steps", type=workloads.positive_int, default=3)
  parser.add_argument("--rounds", type=workloads.positive_int, default=2,
                      help="alternations of ours and the reference; each side's best run counts")
  parser.add_argument("--chunk", type=int, default=0, help="train.logprob_chunk")
  workloads.add_device_flag(parser, 1, " (their heaps add up: see above)")
  args = parser.parse_args()
  meshes = workloads.layouts(args.cpu_devices)
  jax_peak = workloads.matmul_peak_flops()
  tokens = workloads.B * workloads.T
  print(f"machine: {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f}), JAX {jax.__version__}")
  print(f"workload: {workloads.B} sequences x {workloads.T} tokens = {tokens} tokens/step, asympo loss, AdamW, "
        "float32")
  for name in args.configs.split(","):
    flops = workloads.train_step_flops(name)
    with tempfile.TemporaryDirectory() as path:
      workloads.write_checkpoint(name, path)
      steps = {layout: jax_step(path, args.chunk, mesh) for layout, mesh in meshes.items()}
      ours, ref = workloads.alternate(
          lambda: {layout: workloads.best_seconds(one, args.steps) for layout, one in steps.items()},
          lambda: workloads.reference_seconds("train_step", path, args.steps), args.rounds, name)
    peak = max(jax_peak, ref["matmul_peak_flops"])
    print(f"f32 matmul peak: jax ({workloads.matmul_peak_size()}^3) {jax_peak / 1e9:.1f} GFLOP/s, "
          f"torch (2048^3) {ref['matmul_peak_flops'] / 1e9:.1f} GFLOP/s -> {peak / 1e9:.1f}")
    rows = [(f"jax, {layout}", sec) for layout, sec in ours.items()]
    for label, sec in rows + [(f"torch {ref['threads']} threads", ref["seconds"])]:
      print(f"{name:5s} {label:20s} {sec:7.3f} s/step  {tokens / sec:8.0f} tokens/s  "
            f"{flops / sec / 1e9:6.1f} GFLOP/s  MFU {flops / sec / peak:6.1%}")
    ratios = ", ".join(f"{layout} {ref['seconds'] / sec:.2f}" for layout, sec in ours.items())
    print(f"{name:5s} FLOPs/step {flops / 1e12:.3f} T; jax/torch tokens/s ratio: {ratios} "
          f"(torch with {ref['malloc']})", flush=True)


if __name__ == "__main__":
  cpu.tune_malloc()
  main()
