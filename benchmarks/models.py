"""DESIGN §3 benchmark models (sizes from asympo_jax.scratch.SIZES) and the measured f32 matmul peak.

`write_checkpoint(name, path)` saves a random-init Qwen3 model of that size as a Hugging Face directory (through
transformers, so the PyTorch reference and our decoder read the very same weights) and returns the torch model.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import torch
import transformers

from asympo_jax import scratch


def hf_config(name: str) -> transformers.PretrainedConfig:
  c = scratch.SIZES[name]
  return transformers.Qwen3Config(
      vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_hidden_layers=c["num_layers"],
      num_attention_heads=c["num_heads"], num_key_value_heads=c["num_kv_heads"], head_dim=c["head_dim"],
      intermediate_size=c["intermediate_size"], tie_word_embeddings=True, max_position_embeddings=4096,
      bos_token_id=1, eos_token_id=2, pad_token_id=0)


def write_checkpoint(name: str, path: str, seed: int = 0) -> torch.nn.Module:
  torch.manual_seed(seed)
  config = hf_config(name)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  model.eval()
  model.save_pretrained(path)
  return model


def forward_flops_per_token(name: str, context: float) -> float:
  """Matmul FLOPs of one token's forward pass: 2 * (layer weights + LM head) + attention against `context`
  earlier tokens (QK^T and PV: 4 * heads * head_dim * context per layer)."""
  c = scratch.SIZES[name]
  d, h, k, hd, f = c["hidden_size"], c["num_heads"], c["num_kv_heads"], c["head_dim"], c["intermediate_size"]
  layer = d * h * hd * 2 + d * k * hd * 2 + 3 * d * f
  return 2 * (c["num_layers"] * layer + d * c["vocab_size"]) + 4 * c["num_layers"] * h * hd * context


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """Best f32 FLOP/s of an n x n x n jnp matmul on the default device."""
  x = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best
