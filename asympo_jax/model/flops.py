"""The decoder's matmul FLOPs, by formula: what a forward pass computes, counted from the architecture.

XLA's cost analysis counts the body of a loop once (a layer scan, a micro-batch scan, a decode loop), so the
FLOPs of a whole program come from here; tests/test_plan.py checks the formula against XLA's count on a
program without loops. Elementwise work (norms, softmax, RoPE) is left out: it is a few percent at most.

Per token and layer: the projections, 2 x (D (H + 2K) hd + H hd D + 3 D F), and attention over S keys,
2 x H hd S for the scores plus as much for the values. Attention here is the plain form, which computes every
(query, key) pair, masked or not, so S is the number of keys it is given, not the causal half.
"""
from __future__ import annotations

from asympo_jax.model.architecture import ModelConfig


def layer_matmul_params(cfg: ModelConfig) -> int:
  """Weights a token multiplies with in one layer (biases and norms left out)."""
  D, hd, F = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
  return D * (cfg.num_heads + 2 * cfg.num_kv_heads) * hd + cfg.num_heads * hd * D + 3 * D * F


def forward_flops(cfg: ModelConfig, tokens: int, keys: int, logit_rows: int) -> float:
  """FLOPs of one forward pass over `tokens` tokens that each attend to `keys` keys, with the output logits
  of `logit_rows` of them."""
  per_token = 2 * cfg.num_layers * (layer_matmul_params(cfg) + 2 * cfg.num_heads * cfg.head_dim * keys)
  return float(tokens) * per_token + 2.0 * logit_rows * cfg.hidden_size * cfg.vocab_size
