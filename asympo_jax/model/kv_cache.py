"""A fixed-size key/value cache for incremental decoding.

API (used by the sampler):
- `cache = init_cache(cfg, batch, max_len)`: one pair of zero buffers per layer, keys `k[l]`
  [B, K, S_max / KEY_CHUNK, head_dim, KEY_CHUNK] and values `v[l]` [B, K, S_max, head_dim] (S_max is max_len
  rounded up to a multiple of KEY_CHUNK); a slot validity mask `mask_BxS` (0 everywhere) and the next write slot
  `index` (0). Buffers are in the model's compute dtype (`cfg.dtype`) unless `dtype` says otherwise. All fixed-shape, so the cache can be carried through `lax.while_loop` and donated to a jitted
  step.
  The layouts make both attention products plain batched matmuls that read the cache without a transpose:
  queries x keys contracts over head_dim per (B, K, chunk), probs x values over slots per (B, K). Keys come in
  chunks of KEY_CHUNK slots for XLA:CPU's sake (common/cpu.py).
  Each layer has its own buffers rather than one stacked [L, ...] array because attention must read its
  layer's whole cache: a slice of a stacked buffer is a copy on XLA:CPU (3 MB per layer and token for `tiny`'s
  generation workload), while a buffer of its own is updated in place and read directly.
- `hidden, cache = decoder(tokens_BxT, positions_BxT, mask_BxT, cache)`: writes the T new keys/values at slots
  [index, index + T) with `lax.dynamic_update_slice`, records `mask_BxT` as their validity, attends every new
  token to the valid slots at or before its own slot, and advances `index` by T.
  Prefill: the left-padded prompts (T = prompt length, pads have mask 0). Decode: T = 1, one token per row with
  position = previous position + 1 (positions are per row: `max(cumsum(mask) - 1, 0)` over the whole sequence).
  Pad slots are never attended to, so left padding changes nothing for the real tokens.
- The caller keeps index + T <= S_max (writes past the end would be clamped by dynamic_update_slice).
- Per-row slots (the continuous-batching engine, rollout/engine.py): `index` may be int32 [B], each row's own
  next write slot, for decode steps (T = 1): rows that entered the cache at different times then decode
  together. The writes become scatters at each row's slot, and each row sees its own causal prefix.
- `grow(cache, max_len)`: the same cache with room for max_len slots (new slots empty). Attention reads
  every slot of the cache, valid or not, so a decode loop that starts with a small cache and grows it reads
  less (see the sampler's decode segments).
- `repeat_rows(cache, G)`: each row G times (the sampler prefills each prompt once for its G samples).
- `cache_axes()`: the logical axes of each field, for `sharding.logical_sharding`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from asympo_jax.model.architecture import ModelConfig
from asympo_jax.common.cpu import KEY_CHUNK
from asympo_jax.common.sharding import constrain


class KVCache(NamedTuple):
  k: tuple[jax.Array, ...]  # L x [B, K, S_max / KEY_CHUNK, head_dim, KEY_CHUNK]
  v: tuple[jax.Array, ...]  # L x [B, K, S_max, head_dim]
  mask_BxS: jax.Array  # int32, 1 on slots holding a real token
  index: jax.Array  # int32, the next slot to write: a scalar, or [B] per row (decode steps only)


def chunked_slots(length: int) -> int:
  """`length` slots rounded up to whole key chunks: the slot count of a cache that holds `length` tokens."""
  return -(-length // KEY_CHUNK) * KEY_CHUNK


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: str | None = None) -> KVCache:
  slots = chunked_slots(max_len)
  k_shape = (batch, cfg.num_kv_heads, slots // KEY_CHUNK, cfg.head_dim, KEY_CHUNK)
  v_shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
  dtype = dtype or cfg.dtype
  layers = range(cfg.num_layers)
  return KVCache(tuple(jnp.zeros(k_shape, dtype) for _ in layers), tuple(jnp.zeros(v_shape, dtype) for _ in layers),
                 jnp.zeros((batch, slots), jnp.int32), jnp.zeros((), jnp.int32))


def grow(cache: KVCache, max_len: int) -> KVCache:
  """`cache` with max_len slots (rounded up to a multiple of KEY_CHUNK); the added slots are empty (a copy)."""
  slots = chunked_slots(max_len)
  extra = slots - cache.mask_BxS.shape[1]
  if extra < 0:
    raise ValueError(f"cannot shrink a cache of {cache.mask_BxS.shape[1]} slots to {slots}")
  pad = lambda x, axis, n: jnp.pad(x, [(0, n if d == axis else 0) for d in range(x.ndim)])
  return KVCache(tuple(pad(k, 2, extra // KEY_CHUNK) for k in cache.k), tuple(pad(v, 2, extra) for v in cache.v),
                 pad(cache.mask_BxS, 1, extra), cache.index)


def repeat_rows(cache: KVCache, group: int) -> KVCache:
  """Every row of `cache` `group` times in a row (row b of the result is row b // group), laid out by
  `cache_axes` under the current mesh: a prefill of P prompts becomes the cache of their P * group samples."""
  if group == 1:
    return cache
  axes = cache_axes(len(cache.k))
  rep = lambda x, x_axes: constrain(jnp.repeat(x, group, axis=0), x_axes)
  return KVCache(tuple(map(rep, cache.k, axes.k)), tuple(map(rep, cache.v, axes.v)),
                 rep(cache.mask_BxS, axes.mask_BxS), cache.index)


def cache_axes(num_layers: int) -> KVCache:
  """The logical axes of every field of a cache with `num_layers` layers (a KVCache of axis-name tuples)."""
  k = ("act_batch", "act_kv_heads", "cache_seq", "head_dim", None)
  v = ("act_batch", "act_kv_heads", "cache_seq", "head_dim")
  return KVCache((k,) * num_layers, (v,) * num_layers, ("act_batch", "cache_seq"), ())


def key_chunks(k_BxKxhdxS: jax.Array) -> jax.Array:
  """Keys [B, K, hd, S] in the cache's chunked layout [B, K, S / KEY_CHUNK, hd, KEY_CHUNK] (S a multiple of
  KEY_CHUNK)."""
  B, K, hd, S = k_BxKxhdxS.shape
  return k_BxKxhdxS.reshape(B, K, hd, S // KEY_CHUNK, KEY_CHUNK).transpose(0, 1, 3, 2, 4)


def key_slots(k_BxKxCxhdxW: jax.Array) -> jax.Array:
  """The inverse of `key_chunks`: chunked keys back as [B, K, hd, S] (a copy)."""
  B, K, C, hd, W = k_BxKxCxhdxW.shape
  return k_BxKxCxhdxW.transpose(0, 1, 3, 2, 4).reshape(B, K, hd, C * W)


def write_keys(buffer: jax.Array, new_BxKxhdxT: jax.Array, index: jax.Array) -> jax.Array:
  """Writes T new keys at slots [index, index + T) of a layer's key buffer (in place under jit)."""
  new = new_BxKxhdxT.astype(buffer.dtype)
  if index.ndim == 1:  # per-row slots: one decode token per row
    rows_B = jnp.arange(buffer.shape[0])
    return buffer.at[rows_B, :, index // KEY_CHUNK, :, index % KEY_CHUNK].set(new[..., 0])
  if new.shape[3] == 1:  # a decode step: one slot, inside one chunk
    return jax.lax.dynamic_update_slice(buffer, new[:, :, None], (0, 0, index // KEY_CHUNK, 0, index % KEY_CHUNK))
  # A prefill may straddle chunks: write into the unchunked view (two copies of the buffer, once per prompt).
  return key_chunks(jax.lax.dynamic_update_slice(key_slots(buffer), new, (0, 0, 0, index)))


def write_values(buffer: jax.Array, new_BxKxTxhd: jax.Array, index: jax.Array) -> jax.Array:
  """Writes T new values at slots [index, index + T) of a layer's value buffer (in place under jit)."""
  if index.ndim == 1:  # per-row slots: one decode token per row
    return buffer.at[jnp.arange(buffer.shape[0]), :, index].set(new_BxKxTxhd[:, :, 0].astype(buffer.dtype))
  return jax.lax.dynamic_update_slice(buffer, new_BxKxTxhd.astype(buffer.dtype), (0, 0, index, 0))


def update_mask(cache: KVCache, mask_BxT: jax.Array) -> jax.Array:
  """The slot validity after writing T tokens with validity `mask_BxT` at `cache.index`."""
  if cache.index.ndim == 1:  # per-row slots: one decode token per row
    return cache.mask_BxS.at[jnp.arange(mask_BxT.shape[0]), cache.index].set(mask_BxT[:, 0].astype(jnp.int32))
  return jax.lax.dynamic_update_slice(cache.mask_BxS, mask_BxT.astype(jnp.int32), (0, cache.index))


def attention_mask(slot_mask_BxS: jax.Array, index: jax.Array, num_new: int) -> jax.Array:
  """[B, T, S] bool: new token t (at slot index + t) may see slot s if s is valid and s <= index + t (`index`
  a scalar, or [B] per row)."""
  slots_S = jnp.arange(slot_mask_BxS.shape[1])
  last_BxT = jnp.reshape(index, (-1, 1)) + jnp.arange(num_new)[None, :]
  return (slots_S[None, None, :] <= last_BxT[:, :, None]) & (slot_mask_BxS[:, None, :] > 0)
