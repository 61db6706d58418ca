"""Generated tokens/s of the sampler against transformers' `generate` on the same checkpoint.

Workload (docs/design.md §10): 64 prompts of 32 tokens, 64 new tokens each, temperature 1.0, no early stop (no EOS
token is given to either side), float32, random-init Qwen3 `tiny` and `small`. The reference runs in its own
process (benchmarks/torch_reference.py: sharing a process with JAX slows torch several-fold) with as many
threads as this machine has cores. Each side is timed over `--repeats` runs after one warm-up run
(compilation for JAX), in `--rounds` alternations of the two sides; the best run of each side is reported.
Our sampler is timed on one device and on a data mesh over `--cpu-devices` CPU devices (default: one per
core), laid out as a run lays it out on its training mesh; which is faster depends on the model.

MFU counts matmul FLOPs per generated token (workloads.forward_flops_per_token, the attention at the mean
context of 32 + 32 tokens) against the f32 matmul peak measured in this run; prefill is not counted, so MFU
is a lower bound.

    python -m benchmarks.generate [--configs tiny,small] [--repeats 3] [--rounds 2] [--cpu-devices 2]
                                  [--no-reference]

The machine's load average is printed: other processes slow both sides, multi-threaded torch more so.
"""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
from typing import Iterator

import jax
from flax import nnx
from jax.sharding import Mesh

from asympo_jax.run import config as config_lib
from asympo_jax.model import hf_io
from asympo_jax.common import cpu
from asympo_jax.rollout.sampler import Sampler
from benchmarks import workloads


def bench(name: str, meshes: dict[str, Mesh], repeats: int, rounds: int, peak: float, with_reference: bool
          ) -> None:
  with tempfile.TemporaryDirectory() as path:
    workloads.write_checkpoint(name, path)
    cfg = config_lib.base_config().rollout
    cfg.update(dict(prompts_per_step=workloads.PROMPTS, group_size=1, max_prompt_len=workloads.PROMPT_LEN,
                    max_new_tokens=workloads.NEW_TOKENS, temperature=1.0))
    steps = iter(range(1_000_000))
    runs = {}
    for layout, mesh in meshes.items():  # the sampler on a training mesh, as in a run (asympo_jax/run/assemble.py)
      model = hf_io.load_model(path, mesh)
      runs[layout] = functools.partial(generate, Sampler(model, cfg, eos_ids=[], pad_id=0, mesh=mesh),
                                       nnx.state(model), workloads.generation_prompts(model.cfg.vocab_size).tolist(),
                                       steps)

    def ours(times: int = repeats) -> dict[str, float]:
      return {layout: workloads.best_seconds(run, times) for layout, run in runs.items()}

    tokens = workloads.PROMPTS * workloads.NEW_TOKENS
    flops = tokens * workloads.forward_flops_per_token(name, workloads.PROMPT_LEN + workloads.NEW_TOKENS / 2)
    if with_reference:
      best, ref = workloads.alternate(ours, lambda: workloads.reference_seconds("generate", path, repeats), rounds,
                                      name)
    else:
      best = ours(repeats * rounds)
  for layout, t_ours in best.items():
    print(f"{name:6s} jax sampler, {layout:14s} {tokens / t_ours:9.0f} tokens/s  ({t_ours:.3f} s, MFU "
          f"{flops / t_ours / peak:5.1%})", flush=True)
  if not with_reference:
    return
  t_ref = ref["seconds"]
  print(f"{name:6s} transformers  {tokens / t_ref:9.0f} tokens/s  ({t_ref:.3f} s, MFU {flops / t_ref / peak:5.1%}; "
        f"torch {ref['torch']}, {ref['threads']} threads, own process, {ref['malloc']})")
  for layout, t_ours in best.items():
    print(f"{name:6s} ratio, {layout:14s} {t_ref / t_ours:9.2f} x", flush=True)


def generate(sampler: Sampler, state: nnx.State, prompts: list[list[int]], steps: Iterator[int]) -> None:
  out = sampler.generate(state, prompts, seed=0, step=next(steps))
  assert out.mask_BxN.sum() == workloads.PROMPTS * workloads.NEW_TOKENS


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--configs", default="tiny,small")
  ap.add_argument("--repeats", type=workloads.positive_int, default=3)
  ap.add_argument("--rounds", type=workloads.positive_int, default=2,
                  help="alternations of ours and the reference; each side's best run counts")
  ap.add_argument("--no-reference", action="store_true", help="skip transformers (quicker iterations)")
  workloads.add_device_flag(ap, os.cpu_count())
  args = ap.parse_args()
  meshes = workloads.layouts(args.cpu_devices)
  names = args.configs.split(",")
  unknown = [n for n in names if n not in workloads.scratch.SIZES]
  if unknown:
    raise SystemExit(f"--configs: unknown model(s) {unknown}; known: {', '.join(workloads.scratch.SIZES)}")
  peak = workloads.matmul_peak_flops()
  print(f"{jax.default_backend()} x{jax.device_count()} ({os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}), JAX {jax.__version__}; f32 matmul peak {peak / 1e9:.0f} GFLOP/s")
  print(f"workload: {workloads.PROMPTS} prompts x {workloads.PROMPT_LEN} tokens, {workloads.NEW_TOKENS} new tokens "
        "each, temperature 1.0")
  for name in names:
    bench(name, meshes, args.repeats, args.rounds, peak, not args.no_reference)


if __name__ == "__main__":
  cpu.tune_malloc()
  main()
