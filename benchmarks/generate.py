"""Generated tokens/s of the sampler against transformers' `generate` on the same checkpoint.

DESIGN §3 workload: 64 prompts of 32 tokens, 64 new tokens each, temperature 1.0, no early stop (no EOS
token is given to either side), float32, random-init Qwen3 `tiny` and `small`. Both sides run in this process
on the CPU; torch uses as many threads as JAX has cores. Each side is timed over `--repeats` runs after one
warm-up run (compilation for JAX); the best run is reported.

MFU counts matmul FLOPs per generated token (benchmarks/models.py forward_flops_per_token, the attention at
the mean context of 32 + 32 tokens) against the f32 matmul peak measured in the same run; prefill is not
counted, so MFU is a lower bound.

    PYTHONPATH=. python benchmarks/generate.py [--configs tiny,small] [--repeats 3] [--no-reference]

The machine's load average is printed: other processes slow both sides, multi-threaded torch more so.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
import torch
from flax import nnx

import models
from asympo_jax import config as config_lib
from asympo_jax import hf_io
from asympo_jax.sampler import Sampler

PROMPTS, PROMPT_LEN, NEW_TOKENS = 64, 32, 64


def best_time(fn, repeats: int) -> float:
  fn()  # warm-up (compilation)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def bench(name: str, repeats: int, peak: float, with_reference: bool) -> None:
  with tempfile.TemporaryDirectory() as path:
    torch_model = models.write_checkpoint(name, path)
    model = hf_io.load_model(path)
  vocab = models.scratch.SIZES[name]["vocab_size"]
  prompts = np.random.default_rng(0).integers(3, vocab, (PROMPTS, PROMPT_LEN))

  cfg = config_lib.base_config().rollout
  cfg.update(dict(prompts_per_step=PROMPTS, group_size=1, max_prompt_len=PROMPT_LEN, max_new_tokens=NEW_TOKENS,
                  temperature=1.0))
  sampler = Sampler(model, cfg, eos_ids=[], pad_id=0)
  state = nnx.state(model)
  steps = iter(range(1_000_000))

  def ours():
    out = sampler.generate(state, prompts.tolist(), seed=0, step=next(steps))
    assert out.mask_BxN.sum() == PROMPTS * NEW_TOKENS

  ids = torch.as_tensor(prompts)
  mask = torch.ones_like(ids)

  def reference():
    with torch.no_grad():
      out = torch_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 eos_token_id=None, pad_token_id=0)
    assert out.shape == (PROMPTS, PROMPT_LEN + NEW_TOKENS)

  tokens = PROMPTS * NEW_TOKENS
  flops = tokens * models.forward_flops_per_token(name, PROMPT_LEN + NEW_TOKENS / 2)
  t_ours = best_time(ours, repeats)
  print(f"{name:6s} jax sampler   {tokens / t_ours:9.0f} tokens/s  ({t_ours:.3f} s, MFU {flops / t_ours / peak:5.1%})")
  if not with_reference:
    return
  t_ref = best_time(reference, repeats)
  print(f"{name:6s} transformers  {tokens / t_ref:9.0f} tokens/s  ({t_ref:.3f} s, MFU {flops / t_ref / peak:5.1%})")
  print(f"{name:6s} ratio         {t_ref / t_ours:9.2f} x", flush=True)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--configs", default="tiny,small")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--no-reference", action="store_true", help="skip transformers (quicker iterations)")
  args = ap.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  peak = models.matmul_peak_flops()
  print(f"{jax.default_backend()} x{jax.device_count()} ({os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}), JAX {jax.__version__}, torch {torch.__version__}; "
        f"f32 matmul peak {peak / 1e9:.0f} GFLOP/s")
  print(f"workload: {PROMPTS} prompts x {PROMPT_LEN} tokens, {NEW_TOKENS} new tokens each, temperature 1.0")
  for name in args.configs.split(","):
    if name not in models.scratch.SIZES:
      raise SystemExit(f"--configs: unknown model {name!r}; known: {', '.join(models.scratch.SIZES)}")
    bench(name, args.repeats, peak, not args.no_reference)


if __name__ == "__main__":
  main()
