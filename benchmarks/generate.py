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
                                  [--no-reference] [--workload uniform|longtail] [--slots 64]

`--workload longtail` (workloads.LONGTAIL): 256 prompts of 32 tokens, one sample each, temperature 1, rows ending
at any of workloads.longtail_eos (lengths about geometric: mean 64 capped at 512 on `tiny`, mean 32 capped at
256 on `small`). Timed: the continuous-batching engine (`--slots` per data shard) and the static sampler on each
layout, and transformers with sdpa attention in three settings, each in its own process: `generate` with its
default dynamic cache, `generate` with a static cache under torch.compile, and continuous batching
(`generate_batch`, paged sdpa); `--reference-modes` picks them. Each side counts its own useful tokens
(responses up to and including their EOS): transformers draws other tokens, so its lengths differ a little.
On the uniform workload the engine is timed beside the static sampler too.

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
from asympo_jax.rollout.engine import Engine
from asympo_jax.rollout.sampler import Sampler
from benchmarks import workloads

REFERENCE_MODES = ("sdpa", "static_compile", "generate_batch")


def bench(name: str, meshes: dict[str, Mesh], repeats: int, rounds: int, peak: float, with_reference: bool,
          slots: int) -> None:
  with tempfile.TemporaryDirectory() as path:
    workloads.write_checkpoint(name, path)
    cfg = config_lib.base_config().rollout
    cfg.update(dict(prompts_per_step=workloads.PROMPTS, group_size=1, max_prompt_len=workloads.PROMPT_LEN,
                    max_new_tokens=workloads.NEW_TOKENS, temperature=1.0))
    steps = iter(range(1_000_000))
    runs = {}
    for layout, mesh in meshes.items():  # the sampler on a training mesh, as in a run (asympo_jax/run/assemble.py)
      model = hf_io.load_model(path, mesh)
      engine_cfg = cfg.copy_and_resolve_references()
      engine_cfg.update(dict(engine="continuous", slots=slots))
      for label, sampler in (("static", Sampler(model, cfg, eos_ids=[], pad_id=0, mesh=mesh)),
                             ("engine", Engine(model, engine_cfg, eos_ids=[], pad_id=0, mesh=mesh))):
        runs[f"{label}, {layout}"] = functools.partial(generate, sampler, nnx.state(model),
                                                       workloads.generation_prompts(model.cfg.vocab_size).tolist(),
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
    print(f"{name:6s} {layout:22s} {tokens / t_ours:9.0f} tokens/s  ({t_ours:.3f} s, MFU "
          f"{flops / t_ours / peak:5.1%})", flush=True)
  if not with_reference:
    return
  t_ref = ref["seconds"]
  print(f"{name:6s} transformers  {tokens / t_ref:9.0f} tokens/s  ({t_ref:.3f} s, MFU {flops / t_ref / peak:5.1%}; "
        f"torch {ref['torch']}, {ref['threads']} threads, own process, {ref['malloc']})")
  for layout, t_ours in best.items():
    print(f"{name:6s} ratio, {layout:22s} {t_ref / t_ours:9.2f} x", flush=True)


def bench_longtail(name: str, meshes: dict[str, Mesh], repeats: int, rounds: int, slots: int,
                   reference_modes: list[str]) -> None:
  """The long-tailed workload: engine and static sampler per layout, transformers per mode; useful tokens/s."""
  mean, cap = workloads.LONGTAIL[name]
  eos = workloads.longtail_eos(name)
  with tempfile.TemporaryDirectory() as path:
    workloads.write_checkpoint(name, path)
    cfg = config_lib.base_config().rollout
    cfg.update(dict(prompts_per_step=workloads.LONGTAIL_ROWS, group_size=1, max_prompt_len=workloads.PROMPT_LEN,
                    max_new_tokens=cap, temperature=1.0, engine="continuous", slots=slots))
    runs, lengths = {}, {}
    for layout, mesh in meshes.items():
      model = hf_io.load_model(path, mesh)
      prompts = workloads.longtail_prompts(model.cfg.vocab_size).tolist()
      for label, kind in (("engine", Engine), ("static", Sampler)):
        sampler = kind(model, cfg, eos_ids=eos, pad_id=0, mesh=mesh)
        runs[f"{label}, {layout}"] = functools.partial(sampler.generate, nnx.state(model), prompts, seed=0, step=0)
    for key, run in runs.items():  # every run draws the same samples: same seed and step
      lengths[key] = run().mask_BxN.sum(1)
    print(f"{name}: EOS = {len(eos)} of {workloads.scratch.SIZES[name]['vocab_size']} ids (target mean {mean}, cap "
          f"{cap}); our lengths: {workloads.length_stats(next(iter(lengths.values())))}", flush=True)

    def ours() -> dict[str, float]:
      return {key: workloads.best_seconds(run, repeats) for key, run in runs.items()}

    def reference() -> dict[str, dict]:
      # glibc's defaults only: the malloc tunables do not speed up transformers' generate (docs/benchmarks.md)
      return {mode: workloads.reference_seconds("generate_longtail", path, repeats, "--size", name, "--mode", mode,
                                                both_mallocs=False)
              for mode in reference_modes}

    best: dict[str, float] = {}
    refs: dict[str, dict] = {}
    for i in range(rounds):  # alternating sides: the machine's speed drifts
      for key, seconds in ours().items():
        best[key] = min(best.get(key, float("inf")), seconds)
      shown = ", ".join(f"{key} {best[key]:.2f} s" for key in runs)
      for mode, ref in reference().items():
        if mode not in refs or ref["seconds"] < refs[mode]["seconds"]:
          refs[mode] = ref
      shown += "".join(f", {mode} {refs[mode]['seconds']:.2f} s" for mode in refs)
      print(f"{name} round {i + 1}/{rounds} (best so far): {shown}; load average {os.getloadavg()[0]:.1f}",
            flush=True)
  rates = {key: lengths[key].sum() / seconds for key, seconds in best.items()}
  for key, rate in rates.items():
    print(f"{name:6s} {key:24s} {rate:9.0f} useful tokens/s  ({best[key]:.2f} s)")
  for mode, ref in refs.items():
    rates[f"transformers {mode}"] = sum(ref["lengths"]) / ref["seconds"]
    print(f"{name:6s} transformers {mode:14s} {rates[f'transformers {mode}']:9.0f} useful tokens/s  "
          f"({ref['seconds']:.2f} s; lengths {workloads.length_stats(ref['lengths'])}; {ref['malloc']})")
  peers = [key for key in rates if not key.startswith("engine")]
  for key in (k for k in rates if k.startswith("engine")):
    print(f"{name:6s} {key}: " + ", ".join(f"{rates[key] / rates[p]:.2f}x {p}" for p in peers), flush=True)


def generate(sampler: Sampler | Engine, state: nnx.State, prompts: list[list[int]], steps: Iterator[int]) -> None:
  out = sampler.generate(state, prompts, seed=0, step=next(steps))
  assert out.mask_BxN.sum() == workloads.PROMPTS * workloads.NEW_TOKENS


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--configs", default="tiny,small")
  ap.add_argument("--repeats", type=workloads.positive_int, default=3)
  ap.add_argument("--rounds", type=workloads.positive_int, default=2,
                  help="alternations of ours and the reference; each side's best run counts")
  ap.add_argument("--no-reference", action="store_true", help="skip transformers (quicker iterations)")
  ap.add_argument("--workload", choices=("uniform", "longtail"), default="uniform")
  ap.add_argument("--slots", type=workloads.positive_int, default=64, help="the engine's slots per data shard")
  ap.add_argument("--reference-modes", default=",".join(REFERENCE_MODES),
                  help="longtail: transformers settings to time, of " + ", ".join(REFERENCE_MODES))
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
  if args.workload == "longtail":
    modes = [] if args.no_reference else args.reference_modes.split(",")
    for name in names:
      bench_longtail(name, meshes, args.repeats, args.rounds, args.slots, modes)
    return
  print(f"workload: {workloads.PROMPTS} prompts x {workloads.PROMPT_LEN} tokens, {workloads.NEW_TOKENS} new tokens "
        "each, temperature 1.0")
  for name in names:
    bench(name, meshes, args.repeats, args.rounds, peak, not args.no_reference, args.slots)


if __name__ == "__main__":
  cpu.tune_malloc()
  main()
