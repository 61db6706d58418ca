"""Time of one KV-cache decode step and of a full forward for the models of docs/design.md §10 (random init, float32).

    python -m benchmarks.decode_step --size tiny --scan_layers

Workload (docs/design.md §10): batch 64, cache of 32 prompt + 64 new tokens; forward over 96 tokens.
"""
import argparse
import functools
import time

import jax
import jax.numpy as jnp
from flax import nnx

from asympo_jax.common import cpu
from asympo_jax.model import kv_cache
from asympo_jax.model import scratch
from asympo_jax.model.decoder import create_model
from asympo_jax.model.architecture import ModelConfig


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def _time_decode(decode, state, cache, repeats: int) -> float:
  cache = jax.block_until_ready(decode(state, cache))  # compile
  start = time.perf_counter()
  for _ in range(repeats):
    cache = decode(state, cache)  # the donated cache comes back as the next input
  jax.block_until_ready(cache)
  return (time.perf_counter() - start) / repeats


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--size", default="tiny", choices=sorted(scratch.SIZES))
  parser.add_argument("--scan_layers", action="store_true")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--cache_len", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  cfg = ModelConfig(model_type="qwen3", rms_norm_eps=1e-6, rope_theta=1e6, rope_scaling=None, qkv_bias=False,
                    o_bias=False, mlp_bias=False, qk_norm=True, tie_embeddings=True, max_position_embeddings=4096,
                    scan_layers=args.scan_layers, **scratch.SIZES[args.size])
  graphdef, state = nnx.split(create_model(cfg, seed=0))
  B, S = args.batch, args.cache_len
  tokens = jnp.ones((B, 1), jnp.int32)
  cache = kv_cache.init_cache(cfg, B, S)
  cache = cache._replace(mask_BxS=jnp.ones_like(cache.mask_BxS), index=jnp.asarray(S // 2, jnp.int32))

  @functools.partial(jax.jit, donate_argnums=1)
  def decode(state, cache):
    model = nnx.merge(graphdef, state)
    hidden, cache = model(tokens, jnp.full_like(tokens, S // 2), tokens, cache)
    return cache._replace(index=cache.index - 1)  # rewrite the same slot: a steady-state step

  @jax.jit
  def forward(state, tokens_BxT):
    model = nnx.merge(graphdef, state)
    hidden, _ = model(tokens_BxT, jnp.broadcast_to(jnp.arange(S), tokens_BxT.shape), jnp.ones_like(tokens_BxT))
    return model.logits(hidden)

  step = _time_decode(decode, state, cache, repeats=args.repeats)
  full = _time(forward, state, jnp.ones((B, S), jnp.int32), repeats=max(1, args.repeats // 4))
  params = sum(x.size for x in jax.tree.leaves(state))
  print(f"{args.size} scan_layers={args.scan_layers} params={params / 1e6:.2f}M devices={jax.devices()[0].platform}"
        f" x{jax.device_count()}, jax {jax.__version__}")
  print(f"decode step B={B} cache={S}: {step * 1e3:.2f} ms ({B / step:.0f} tokens/s)")
  print(f"forward B={B} T={S}: {full * 1e3:.1f} ms ({B * S / full:.0f} tokens/s)")


if __name__ == "__main__":
  cpu.tune_malloc()
  main()
