"""Tiny random Hugging Face checkpoints (PyTorch reference models) for parity tests. Test-only: imports torch.

`make_checkpoint(case, path)` writes a transformers model with every weight randomised (norm scales and biases
included, so a mis-mapped tensor shows up in the logits) and returns the torch model in eval mode.
`torch_logits(model, tokens, mask)` runs it with the positions our contract derives from the mask.
"""
from __future__ import annotations

import numpy as np
import torch
import transformers

_COMMON = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=48, rms_norm_eps=1e-6, max_position_embeddings=128, bos_token_id=1,
               eos_token_id=2)

CASES: dict[str, dict] = {
    # Qwen2 always has q/k/v biases; untied embeddings.
    "qwen2_bias_untied": dict(model_type="qwen2", tie_word_embeddings=False,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000.0}),
    # Qwen3: per-head QK RMSNorm, no bias, tied (like the small Qwen3 models).
    "qwen3_tied": dict(model_type="qwen3", head_dim=16, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # Llama 3.2 style: llama3 RoPE scaling with all three frequency bands present at head_dim 16, tied.
    "llama3_scaled_tied": dict(model_type="llama", head_dim=16, tie_word_embeddings=True,
                               rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 64}),
}


def hf_config(case: str) -> transformers.PretrainedConfig:
  fields = dict(_COMMON, **CASES[case])
  return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


def make_checkpoint(case: str, path: str, seed: int = 0) -> torch.nn.Module:
  torch.manual_seed(seed)
  config = hf_config(case)
  config._attn_implementation = "eager"
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = 0.2 * torch.randn_like(p)
      p.copy_(1.0 + noise if "norm" in name else noise)
  model.eval()
  model.save_pretrained(path)
  return model


def positions_from_mask(mask_BxT: np.ndarray) -> np.ndarray:
  return np.maximum(np.cumsum(mask_BxT, axis=1) - 1, 0)


def torch_logits(model: torch.nn.Module, tokens_BxT: np.ndarray, mask_BxT: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(tokens_BxT, dtype=torch.long),
                attention_mask=torch.as_tensor(mask_BxT, dtype=torch.long),
                position_ids=torch.as_tensor(positions_from_mask(mask_BxT), dtype=torch.long))
  return out.logits.float().numpy()
