"""Compiled memory of a forward + backward pass with each model.attention that runs on CPU (plain, chunked).

    python -m benchmarks.attention_memory [--size tiny] [--rows 8] [--tokens 2048]

Nothing runs: the gradient of the response tokens' summed log-probs (the last 64 columns) is compiled for
abstract parameters and tokens, and XLA's memory_analysis gives its temporaries. The plain attention keeps
[rows, heads, T, T] float32 scores and probabilities per layer for the backward pass; chunked keeps none.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from asympo_jax.model import scratch
from asympo_jax.model.decoder import Decoder, positions_of
from asympo_jax.model.logprobs import token_logprobs

RESPONSE = 64


def temp_bytes(size: str, attention: str, rows: int, tokens: int) -> tuple[int, float]:
  """(temporary bytes, compile seconds) of the gradient program."""
  cfg = scratch.model_config(size, attention=attention)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  tokens_BxT = jax.ShapeDtypeStruct((rows, tokens), jnp.int32)

  def loss(state, tokens_BxT, mask_BxT):
    model = nnx.merge(graphdef, state)
    hidden, _ = model(tokens_BxT, positions_of(mask_BxT), mask_BxT)
    return token_logprobs(hidden, model.unembedding(), tokens_BxT, 0, start=tokens - RESPONSE)[0].sum()

  start = time.perf_counter()
  compiled = jax.jit(jax.grad(loss)).lower(state, tokens_BxT, tokens_BxT).compile()
  return compiled.memory_analysis().temp_size_in_bytes, time.perf_counter() - start


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", default="tiny", choices=sorted(scratch.SIZES))
  ap.add_argument("--rows", type=int, default=8)
  ap.add_argument("--tokens", type=int, default=2048)
  args = ap.parse_args()
  print(f"{args.size}, {args.rows} rows x {args.tokens} tokens, float32, {jax.default_backend()}")
  for attention in ("plain", "chunked"):
    temp, seconds = temp_bytes(args.size, attention, args.rows, args.tokens)
    print(f"{attention:8s} temporaries {temp / 2**20:8.0f} MiB (compiled in {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
