"""The benchmark workloads of docs/design.md §10: model sizes, inputs, FLOP counts, the matmul peak, and the
PyTorch reference.

The reference (transformers on PyTorch) always runs in its own process, `python -m benchmarks.torch_reference`,
because it slows down several-fold when it shares a process with JAX's CPU runtime. That script imports this
module too, so nothing here starts JAX at import time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

from asympo_jax.model import scratch
from asympo_jax.rollout.train_batch import TrainBatch

# Generation: PROMPTS prompts of PROMPT_LEN tokens, NEW_TOKENS new tokens each, temperature 1, no early stop.
PROMPTS, PROMPT_LEN, NEW_TOKENS = 64, 32, 64
# Long-tailed generation (`benchmarks.generate --workload longtail`): LONGTAIL_ROWS prompts of PROMPT_LEN tokens,
# one sample each, temperature 1; per model, (mean, cap) of the response lengths: a row ends at any of the
# `longtail_eos` ids, which a random-init model draws with about 1/mean probability at every step, so lengths are
# about geometric with that mean, capped at max_new_tokens = cap.
LONGTAIL_ROWS = 256
LONGTAIL = {"tiny": (64, 512), "small": (32, 256)}
# Train step: B sequences of PROMPT + RESPONSE tokens, groups of G, one AdamW update.
B, PROMPT, RESPONSE, G = 64, 32, 64, 8
T = PROMPT + RESPONSE
THREADS = 2  # this machine's cores; the reference gets as many threads as JAX has cores

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hf_fields(size: str) -> dict[str, Any]:
  """transformers.Qwen3Config fields of a docs/design.md §10 size (tied embeddings)."""
  c = scratch.SIZES[size]
  return dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_hidden_layers=c["num_layers"],
              num_attention_heads=c["num_heads"], num_key_value_heads=c["num_kv_heads"], head_dim=c["head_dim"],
              intermediate_size=c["intermediate_size"], tie_word_embeddings=True, max_position_embeddings=4096,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)


def generation_prompts(vocab: int) -> np.ndarray:
  """[PROMPTS, PROMPT_LEN] int64 token ids, the same on both sides."""
  return np.random.default_rng(0).integers(3, vocab, (PROMPTS, PROMPT_LEN))


def longtail_prompts(vocab: int) -> np.ndarray:
  """[LONGTAIL_ROWS, PROMPT_LEN] int64 token ids, the same on both sides."""
  return np.random.default_rng(1).integers(3, vocab, (LONGTAIL_ROWS, PROMPT_LEN))


def longtail_eos(size: str) -> list[int]:
  """The EOS ids of the long-tailed workload on `size`: vocab / mean ids, so that a random-init model, whose
  next-token distribution is close to uniform, ends a row with probability about 1 / mean at every step."""
  mean, _ = LONGTAIL[size]
  return list(range(3, 3 + scratch.SIZES[size]["vocab_size"] // mean))


def length_stats(lengths: Any) -> str:
  """mean, p50, p90 and max of response lengths, as one line."""
  x = np.asarray(lengths)
  return (f"mean {x.mean():.1f}, p50 {np.percentile(x, 50):.0f}, p90 {np.percentile(x, 90):.0f}, "
          f"max {x.max()}")


def train_batch(vocab: int) -> TrainBatch:
  """The train-step batch as the trainer sees it, on the host: full-length prompts and responses."""
  rng = np.random.default_rng(0)
  loss_mask = np.zeros((B, T), np.float32)
  loss_mask[:, PROMPT:] = 1.0
  return TrainBatch(tokens_BxT=rng.integers(0, vocab, (B, T)).astype(np.int32),
                    input_mask_BxT=np.ones((B, T), np.int32), loss_mask_BxT=loss_mask,
                    rewards_B=rng.integers(0, 2, (B,)).astype(np.float32), policy_version_B=np.zeros((B,), np.int32))


def _layer_weights(c: dict[str, int]) -> int:
  d, h, k, hd, f = c["hidden_size"], c["num_heads"], c["num_kv_heads"], c["head_dim"], c["intermediate_size"]
  return d * h * hd * 2 + d * k * hd * 2 + 3 * d * f


def forward_flops_per_token(size: str, context: float) -> float:
  """Matmul FLOPs of one token's forward pass: 2 * (layer weights + LM head) + attention against `context`
  earlier tokens (QK^T and PV: 4 * heads * head_dim * context per layer)."""
  c = scratch.SIZES[size]
  return (2 * (c["num_layers"] * _layer_weights(c) + c["hidden_size"] * c["vocab_size"])
          + 4 * c["num_layers"] * c["num_heads"] * c["head_dim"] * context)


def train_step_flops(size: str) -> float:
  """Matmul FLOPs of one train step, forward + backward = 3 x forward:
  6 * B * (T * layer weights + RESPONSE * D * V)  +  12 * layers * B * T^2 * heads * head_dim
  (the LM head is counted on the RESPONSE columns, the ones the loss scores; the last term is attention
  scores and values over the full T x T square)."""
  c = scratch.SIZES[size]
  return (6 * B * (T * c["num_layers"] * _layer_weights(c) + RESPONSE * c["hidden_size"] * c["vocab_size"])
          + 12 * c["num_layers"] * B * T * T * c["num_heads"] * c["head_dim"])


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Best wall time of `repeats` calls of fn (which must block until its result is ready), after one warm-up
  call (compilation)."""
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def positive_int(text: str) -> int:
  """argparse type for counts of runs, steps and rounds."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def add_device_flag(parser: argparse.ArgumentParser, default: int, note: str = "") -> None:
  parser.add_argument("--cpu-devices", type=positive_int, default=default,
                      help=f"JAX CPU devices (jax_num_cpu_devices); ours runs on 1 and on all of them{note}")


def layouts(cpu_devices: int) -> dict[str, Any]:
  """The meshes our side is timed on, by label: one device, and a data mesh over every device when there are
  several (on a CPU, `cpu_devices` of them: each device runs its own program, so two one-core devices can both
  be busy where one two-core device leaves a core idle in its single-threaded ops). Call before any other
  JAX use: it sets jax_num_cpu_devices."""
  import jax  # here, not at module level: torch_reference.py imports this module and must not start JAX

  from asympo_jax.common import sharding

  jax.config.update("jax_num_cpu_devices", cpu_devices)
  devices = jax.devices()
  sizes = sorted({1, len(devices)})
  return {f"{n} {jax.default_backend()} device{'s' if n > 1 else ''}":
          sharding.data_mesh(devices[:n]) for n in sizes}


def alternate(ours: Callable[[], dict[str, float]], reference: Callable[[], dict[str, Any]], rounds: int,
              label: str) -> tuple[dict[str, float], dict[str, Any]]:
  """Runs `ours` (seconds by layout) and `reference` (a `reference_seconds` result) `rounds` times each,
  alternately, and returns each side's fastest: per layout for ours, and the reference run with the highest
  matmul peak any of its runs measured. A shared machine's speed drifts within minutes; alternating
  gives both sides the same chance at its fast spells, where one block each would hand the ratio to whichever
  side ran in the faster one. Prints every round."""
  best_ours: dict[str, float] = {}
  best_ref, peak = None, 0.0
  for i in range(rounds):
    times, ref = ours(), reference()
    shown = ", ".join(f"{layout} {seconds:.3f} s" for layout, seconds in times.items())
    print(f"{label} round {i + 1}/{rounds}: ours {shown}; reference {ref['seconds']:.3f} s ({ref['malloc']}), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for layout, seconds in times.items():
      best_ours[layout] = min(best_ours.get(layout, float("inf")), seconds)
    peak = max(peak, ref["matmul_peak_flops"])
    if best_ref is None or ref["seconds"] < best_ref["seconds"]:
      best_ref = ref
  return best_ours, {**best_ref, "matmul_peak_flops": peak}


def matmul_peak_size() -> int:
  """n of the n x n x n product that measures the peak: 2048 on a CPU, 8192 on an accelerator. On one H100 a
  2048^3 product lasts tens of microseconds, so dispatch and sync dominated it and the "peak" came out far
  below the GPU's rate (an MFU over 100% in one run; docs/benchmarks.md, "One GPU")."""
  import jax  # here, not at module level: torch_reference.py imports this module and must not start JAX

  return 2048 if jax.default_backend() == "cpu" else 8192


def matmul_peak_flops(repeats: int = 5) -> float:
  """Best f32 FLOP/s of an n x n x n jnp matmul (n = matmul_peak_size()) of random inputs on the default JAX
  device, at the default matmul precision that the measured steps also run at (TF32 on recent NVIDIA GPUs)."""
  import jax

  n = matmul_peak_size()
  x = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
  f = jax.jit(lambda a: a @ a)
  return 2 * n**3 / best_seconds(lambda: f(x).block_until_ready(), repeats)


def _reference(*args: str, env: dict[str, str] | None = None) -> str:
  done = subprocess.run([sys.executable, "-m", "benchmarks.torch_reference", *args], cwd=_ROOT, capture_output=True,
                        text=True, env=env)
  if done.returncode != 0:
    raise RuntimeError(f"torch_reference.py {' '.join(args)} failed:\n{done.stderr[-4000:]}")
  return done.stdout


def write_checkpoint(size: str, path: str) -> None:
  """A random-init Qwen3 of `size` saved by transformers, so both sides read the very same weights."""
  _reference("write", "--size", size, "--path", path)


def reference_seconds(task: str, path: str, repeats: int, *options: str, both_mallocs: bool = True
                      ) -> dict[str, Any]:
  """Runs the PyTorch reference (a task of torch_reference.py, with its `options`) on the checkpoint at `path`
  in its own process:
  {"seconds": best of `repeats`, "threads", "torch", "matmul_peak_flops" (torch.mm), "malloc"}.

  The reference runs twice, with this process's GLIBC_TUNABLES (the JAX side's, asympo_jax/common/cpu.py)
  and with glibc's defaults, and the faster run is returned ("malloc" says which): the tunables speed torch's
  train step up as much as ours but not its `generate`, and the reference should be at its best.
  `both_mallocs=False` runs it with glibc's defaults only.
  """
  envs = [("tuned malloc" if "GLIBC_TUNABLES" in os.environ else "glibc defaults", None)]
  if "GLIBC_TUNABLES" in os.environ:
    envs.append(("glibc defaults", {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}))
  if not both_mallocs:
    envs = envs[-1:]
  runs = [{**json.loads(_reference(task, "--path", path, "--repeats", str(repeats), *options,
                                   env=env).strip().splitlines()[-1]),
           "malloc": label} for label, env in envs]
  peak = max(r["matmul_peak_flops"] for r in runs)
  return {**min(runs, key=lambda r: r["seconds"]), "matmul_peak_flops": peak}
