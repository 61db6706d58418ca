"""A fixed-size key/value cache for incremental decoding.

API (used by the sampler):
- `cache = init_cache(cfg, batch, max_len)`: zero buffers `k` [L, B, K, head_dim, S_max] and `v`
  [L, B, K, S_max, head_dim], laid out so that both attention products are plain batched matmuls over (B, K)
  (queries x keys contracts over head_dim, probs x values over slots) that read the cache without a transpose;
  a slot validity mask `mask_BxS` (0 everywhere) and the next write slot `index` (0). All fixed-shape, so the cache can
  be carried through `lax.while_loop` and donated to a jitted step.
- `hidden, cache = decoder(tokens_BxT, positions_BxT, mask_BxT, cache)`: writes the T new keys/values at slots
  [index, index + T) with `lax.dynamic_update_slice`, records `mask_BxT` as their validity, attends every new
  token to the valid slots at or before its own slot, and advances `index` by T.
  Prefill: the left-padded prompts (T = prompt length, pads have mask 0). Decode: T = 1, one token per row with
  position = previous position + 1 (positions are per row: `max(cumsum(mask) - 1, 0)` over the whole sequence).
  Pad slots are never attended to, so left padding changes nothing for the real tokens.
- The caller keeps index + T <= S_max (writes past the end would be clamped by dynamic_update_slice).
- `cache_axes()`: the logical axes of each field, for `sharding.logical_sharding`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from asympo_jax.model_config import ModelConfig


class KVCache(NamedTuple):
  k: jax.Array  # [L, B, K, head_dim, S_max]
  v: jax.Array  # [L, B, K, S_max, head_dim]
  mask_BxS: jax.Array  # int32, 1 on slots holding a real token
  index: jax.Array  # int32 scalar, the next slot to write


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> KVCache:
  k_shape = (cfg.num_layers, batch, cfg.num_kv_heads, cfg.head_dim, max_len)
  v_shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  dtype = dtype or cfg.param_dtype
  return KVCache(jnp.zeros(k_shape, dtype), jnp.zeros(v_shape, dtype), jnp.zeros((batch, max_len), jnp.int32),
                 jnp.zeros((), jnp.int32))


def cache_axes() -> KVCache:
  v = ("layers", "act_batch", "act_kv_heads", "cache_seq", "head_dim")
  return KVCache(v[:3] + ("head_dim", "cache_seq"), v, ("act_batch", "cache_seq"), ())


def write(buffer: jax.Array, new: jax.Array, layer: Any, index: jax.Array, slot_axis: int) -> jax.Array:
  """Writes layer `layer`'s T new slots at `index` into the stacked buffer (in place under jit). `new` has the
  buffer's layout less the layer axis, with T slots on `slot_axis` (an axis of `new`)."""
  start = [layer] + [0] * new.ndim
  start[1 + slot_axis] = index
  return jax.lax.dynamic_update_slice(buffer, new[None].astype(buffer.dtype), tuple(start))


def update_mask(cache: KVCache, mask_BxT: jax.Array) -> jax.Array:
  """The slot validity after writing T tokens with validity `mask_BxT` at `cache.index`."""
  return jax.lax.dynamic_update_slice(cache.mask_BxS, mask_BxT.astype(jnp.int32), (0, cache.index))


def attention_mask(slot_mask_BxS: jax.Array, index: jax.Array, num_new: int) -> jax.Array:
  """[B, T, S] bool: new token t (at slot index + t) may see slot s if s is valid and s <= index + t."""
  slots_S = jnp.arange(slot_mask_BxS.shape[1])
  causal_TxS = slots_S[None, :] <= index + jnp.arange(num_new)[:, None]
  return causal_TxS[None] & (slot_mask_BxS[:, None, :] > 0)
