"""Scratch checkpoints: a byte-level BPE tokenizer trained on a text corpus plus a randomly initialised Qwen3
decoder of a named size (docs/design.md §10), written as a Hugging Face directory. No hub access and no torch needed:
offline experiments and benchmarks start from `build(path, "tiny", texts)`.

    python -m asympo_jax.model.scratch --out runs/scratch_tiny --size tiny --corpus some.txt
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Iterable

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, trainers

from asympo_jax.model import hf_io
from asympo_jax.model.decoder import create_model
from asympo_jax.model.architecture import ModelConfig

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = [PAD, IM_START, IM_END]  # the tokenizer's first ids, in this order
EOS_ID = SPECIALS.index(IM_END)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The benchmark sizes of docs/design.md §10 (Qwen3 architecture, tied embeddings).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(vocab_size=512, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
                 intermediate_size=768),
    "small": dict(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                  intermediate_size=1536),
}


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
  """Byte-level BPE (every string encodes) with Qwen-style chat special tokens and a chat template."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer)
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD,
                                              chat_template=CHAT_TEMPLATE)


def _size(size: str) -> dict[str, int]:
  if size not in SIZES:
    raise ValueError(f"unknown scratch size {size!r}; known: {', '.join(SIZES)}")
  return SIZES[size]


def model_config(size: str, **options) -> ModelConfig:
  """The architecture of a scratch model of `size` (its tokenizer's EOS id is EOS_ID)."""
  return ModelConfig(model_type="qwen3", rms_norm_eps=1e-6, rope_theta=1_000_000.0, rope_scaling=None,
                     qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=True, tie_embeddings=True,
                     max_position_embeddings=4096, bos_token_id=None, eos_token_id=EOS_ID,
                     **_size(size), **options)


def build(path: str, size: str, texts: Iterable[str], seed: int = 0, **options) -> ModelConfig:
  """Writes a scratch HF directory at `path`; `options` set ModelConfig fields such as param_dtype."""
  tokenizer = build_tokenizer(texts, _size(size)["vocab_size"])
  if tokenizer.eos_token_id != EOS_ID:
    raise ValueError(f"tokenizer EOS id {tokenizer.eos_token_id}, expected {EOS_ID}")
  cfg = model_config(size, **options)
  if len(tokenizer) > cfg.vocab_size:
    raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size={cfg.vocab_size}")
  hf_io.save_model(create_model(cfg, seed), path, tokenizer)
  return cfg


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
  parser.add_argument("--corpus", nargs="*", default=[], help="text files the tokenizer is trained on")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--param_dtype", default="float32")
  args = parser.parse_args()
  texts = [open(file, encoding="utf-8").read() for file in args.corpus]
  cfg = build(args.out, args.size, texts, args.seed, param_dtype=args.param_dtype)
  print(f"wrote {args.out}: {dataclasses.asdict(cfg)}")


if __name__ == "__main__":
  main()
