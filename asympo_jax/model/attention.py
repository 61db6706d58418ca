"""Memory-efficient attention for the multi-token calls (the train step and a prefill): `model.attention`.

Every form here computes, for queries q [B, T, H, hd] and keys and values [B, T, K, hd] (grouped-query: H a
multiple of K), causal attention in which token t sees token s <= t when both are real (`mask_BxT`), with a
float32 softmax; a padding query sees only padding (its output is never scored). None materialises the
[B, H, T, T] scores that the plain form (decoder.attention) does:

- `chunked`: online softmax over key blocks in plain JAX, with its own backward pass that recomputes each
  block's probabilities from the saved log-sum-exp (flash attention's algorithm), so neither pass keeps more
  than one [B, H, T, block] block. Runs anywhere; the portable form and the CPU one.
- `splash`: Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention), TPU only. Padding goes
  in as segment ids (real tokens 1, padding 0).
- `cudnn`: cuDNN flash attention through `jax.nn.dot_product_attention`, GPU only. cuDNN takes padding only as
  sequence lengths (right padding), so the mask goes in as a [B, 1, T, T] bias: one per row, not per head.

Under a mesh, the two kernels run per shard (`shard_map`): XLA cannot split a custom call itself and would
gather its operands onto every device. Rows split as the activations' rules split them, heads over `tensor`.

`ATTENTION` is the registry `model.attention` names; `BACKENDS` says where each can run. `model.attention =
auto` names none of them: `resolve` picks the memory-efficient one of the platform a run's devices are on.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from asympo_jax.common import sharding

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
KEY_BLOCK = 512  # chunked: keys per block; splash: the largest tile


def _visible(q_valid_BxT: jax.Array, k_valid_BxS: jax.Array, q_pos_T: jax.Array, k_pos_S: jax.Array) -> jax.Array:
  """[B, T, S] bool: causal, and real only with real (padding only with padding)."""
  same = q_valid_BxT[:, :, None] == k_valid_BxS[:, None, :]
  return same & (k_pos_S[None, None, :] <= q_pos_T[None, :, None])


def _blocks(x: jax.Array, n: int, block: int, axis: int) -> jax.Array:
  """x with `axis` padded to n * block and split into n blocks, the block index leading."""
  pad = [(0, n * block - x.shape[axis]) if d == axis else (0, 0) for d in range(x.ndim)]
  x = jnp.pad(x, pad)
  x = x.reshape(*x.shape[:axis], n, block, *x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _grouped(q_BxTxHxhd: jax.Array, K: int) -> jax.Array:
  """Queries as [B, K, G, T, hd]: the G query heads of each KV head together."""
  B, T, H, hd = q_BxTxHxhd.shape
  return q_BxTxHxhd.reshape(B, T, K, H // K, hd).transpose(0, 2, 3, 1, 4)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def chunked(q_BxTxHxhd: jax.Array, k_BxTxKxhd: jax.Array, v_BxTxKxhd: jax.Array, mask_BxT: jax.Array,
            block: int = KEY_BLOCK) -> jax.Array:
  """Online-softmax attention over key blocks of `block` tokens; [B, T, H, hd] in v's dtype."""
  return _chunked_forward(q_BxTxHxhd, k_BxTxKxhd, v_BxTxKxhd, mask_BxT, block)[0]


def _key_blocks(k_BxTxKxhd: jax.Array, v_BxTxKxhd: jax.Array, mask_BxT: jax.Array, block: int) -> tuple:
  """What `lax.scan` walks over: keys and values [N, B, K, W, hd], their validity [N, B, W] and positions
  [N, W], in N blocks of W = `block` tokens (the last padded with invalid tokens)."""
  n = -(-k_BxTxKxhd.shape[1] // block)
  k_NxBxKxWxhd = _blocks(k_BxTxKxhd.transpose(0, 2, 1, 3), n, block, 2)
  v_NxBxKxWxhd = _blocks(v_BxTxKxhd.transpose(0, 2, 1, 3), n, block, 2)
  return k_NxBxKxWxhd, v_NxBxKxWxhd, _blocks(mask_BxT > 0, n, block, 1), jnp.arange(n * block).reshape(n, block)


def _block_scores(q_BxKxGxTxhd: jax.Array, mask_BxT: jax.Array, blk: tuple) -> tuple[jax.Array, jax.Array]:
  """The float32 scores [B, K, G, T, W] of the queries against one key block, and their visibility
  [B, 1, 1, T, W]."""
  k_j, _, kvalid_j, pos_j = blk
  T, hd = q_BxKxGxTxhd.shape[3:]
  s = jnp.einsum("bkgth,bkwh->bkgtw", q_BxKxGxTxhd, k_j, preferred_element_type=jnp.float32) / math.sqrt(hd)
  return s, _visible(mask_BxT > 0, kvalid_j, jnp.arange(T), pos_j)[:, None, None]


def _chunked_forward(q, k, v, mask_BxT, block):
  B, T, H, hd = q.shape
  K = k.shape[2]
  q_BxKxGxTxhd = _grouped(q, K)

  def step(carry, blk):
    m, l, acc = carry  # running max, softmax denominator, unnormalised output; [B, K, G, T(, hd)] float32
    s, vis = _block_scores(q_BxKxGxTxhd, mask_BxT, blk)
    s = jnp.where(vis, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(-1))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # no visible key yet: keep exp() away from inf - inf
    p = jnp.where(vis, jnp.exp(s - m_safe[..., None]), 0.0)
    alpha = jnp.exp(m - m_safe)
    l = alpha * l + p.sum(-1)
    acc = alpha[..., None] * acc + jnp.einsum("bkgtw,bkwh->bkgth", p.astype(v.dtype), blk[1],
                                              preferred_element_type=jnp.float32)
    return (m_new, l, acc), None

  G = H // K
  init = (jnp.full((B, K, G, T), -jnp.inf, jnp.float32), jnp.zeros((B, K, G, T), jnp.float32),
          jnp.zeros((B, K, G, T, hd), jnp.float32))
  (m, l, acc), _ = jax.lax.scan(step, init, _key_blocks(k, v, mask_BxT, block))
  seen = l > 0
  out_BxKxGxTxhd = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0).astype(v.dtype)
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)  # inf: exp(s - lse) = 0 in backward
  out = out_BxKxGxTxhd.transpose(0, 3, 1, 2, 4).reshape(B, T, H, hd)
  return out, (q, k, v, mask_BxT, out_BxKxGxTxhd, lse)


def _chunked_backward(block, residuals, dout_BxTxHxhd):
  q, k, v, mask_BxT, out_BxKxGxTxhd, lse = residuals
  B, T, H, hd = q.shape
  K = k.shape[2]
  q_BxKxGxTxhd = _grouped(q, K)
  do = _grouped(dout_BxTxHxhd, K).astype(jnp.float32)
  delta = jnp.sum(do * out_BxKxGxTxhd.astype(jnp.float32), axis=-1)  # [B, K, G, T]

  def step(dq, blk):
    k_j, v_j = blk[:2]
    s, vis = _block_scores(q_BxKxGxTxhd, mask_BxT, blk)
    p = jnp.where(vis, jnp.exp(s - lse[..., None]), 0.0)
    dv_j = jnp.einsum("bkgtw,bkgth->bkwh", p.astype(v.dtype), do.astype(v.dtype),
                      preferred_element_type=jnp.float32)
    dp = jnp.einsum("bkgth,bkwh->bkgtw", do, v_j.astype(jnp.float32))
    ds = p * (dp - delta[..., None]) / math.sqrt(hd)
    dq = dq + jnp.einsum("bkgtw,bkwh->bkgth", ds, k_j.astype(jnp.float32))
    dk_j = jnp.einsum("bkgtw,bkgth->bkwh", ds, q_BxKxGxTxhd.astype(jnp.float32))
    return dq, (dk_j, dv_j)

  blocks = _key_blocks(k, v, mask_BxT, block)
  dq, (dk, dv) = jax.lax.scan(step, jnp.zeros(q_BxKxGxTxhd.shape, jnp.float32), blocks)
  n = blocks[0].shape[0]
  unblock = lambda x: jnp.moveaxis(x, 0, 2).reshape(B, K, n * block, hd)[:, :, :T].transpose(0, 2, 1, 3)
  dq = dq.transpose(0, 3, 1, 2, 4).reshape(B, T, H, hd)
  return dq.astype(q.dtype), unblock(dk).astype(k.dtype), unblock(dv).astype(v.dtype), None


chunked.defvjp(lambda q, k, v, mask, block: _chunked_forward(q, k, v, mask, block), _chunked_backward)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pad_time(x: jax.Array, length: int) -> jax.Array:
  return jnp.pad(x, [(0, length - x.shape[1]) if d == 1 else (0, 0) for d in range(x.ndim)])


def _splash(q_BxTxHxhd: jax.Array, k_BxTxKxhd: jax.Array, v_BxTxKxhd: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Splash attention on one shard: the MQA kernel per (row, KV head), over its G query heads."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # imports Pallas' TPU lowering

  B, T, H, hd = q_BxTxHxhd.shape
  K = k_BxTxKxhd.shape[2]
  # Tiles of 128 tokens at least (the TPU's lanes); padded tokens are segment 0, unseen by real ones.
  block = min(KEY_BLOCK, _round_up(T, 128))
  Tp = _round_up(T, block)
  q, k, v, mask = (_pad_time(x, Tp) for x in (q_BxTxHxhd, k_BxTxKxhd, v_BxTxKxhd, mask_BxT))
  q = _grouped(q * jnp.asarray(1 / math.sqrt(hd), q.dtype), K)  # the kernel does not scale the scores
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, Tp, hd]
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  heads = splash.MultiHeadMask([splash.CausalMask((Tp, Tp))] * (H // K))
  kernel = splash.make_splash_mqa_single_device(heads, block_sizes=sizes)
  segments = splash.SegmentIds(q=mask.astype(jnp.int32), kv=mask.astype(jnp.int32))
  per_row = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over the KV heads
  out_BxKxGxTxhd = jax.vmap(per_row)(q, k, v, segments)
  return out_BxKxGxTxhd.transpose(0, 3, 1, 2, 4).reshape(B, Tp, H, hd)[:, :T].astype(v_BxTxKxhd.dtype)


def _cudnn(q_BxTxHxhd: jax.Array, k_BxTxKxhd: jax.Array, v_BxTxKxhd: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """cuDNN flash attention on one shard, the mask as one [B, 1, T, T] bias."""
  T = q_BxTxHxhd.shape[1]
  valid = mask_BxT > 0
  visible_Bx1xTxT = _visible(valid, valid, jnp.arange(T), jnp.arange(T))[:, None]
  return jax.nn.dot_product_attention(q_BxTxHxhd, k_BxTxKxhd, v_BxTxKxhd, mask=visible_Bx1xTxT,
                                      implementation="cudnn")


def per_shard(fn: AttentionFn) -> AttentionFn:
  """`fn` run on each shard of the current mesh (rows as the activation rules split them, KV heads and their
  query heads over `tensor`); `fn` itself without a mesh."""

  def sharded(q_BxTxHxhd, k_BxTxKxhd, v_BxTxKxhd, mask_BxT):
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
      return fn(q_BxTxHxhd, k_BxTxKxhd, v_BxTxKxhd, mask_BxT)
    shape = dict(mesh.shape)
    kv = sharding.logical_spec(("act_batch", None, "act_kv_heads", None), k_BxTxKxhd.shape, shape)
    # Query heads split exactly as their KV heads: with the KV heads whole, the query heads stay whole too.
    q = PartitionSpec(kv[0], None, kv[2], None)
    rows = PartitionSpec(kv[0], None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(q, kv, kv, rows), out_specs=q, check_vma=False)(
        q_BxTxHxhd, k_BxTxKxhd, v_BxTxKxhd, mask_BxT)

  return sharded


# model.attention -> the multi-token attention; "plain" is decoder.attention (no entry: the decoder's own path).
ATTENTION: dict[str, AttentionFn] = {
    "chunked": lambda q, k, v, mask: chunked(q, k, v, mask, KEY_BLOCK),
    "splash": per_shard(_splash),
    "cudnn": per_shard(_cudnn),
}
NAMES = ("plain", *ATTENTION)
# Where each can run (jax platform names); None: anywhere.
BACKENDS: dict[str, tuple[str, ...] | None] = {"plain": None, "chunked": None, "splash": ("tpu",), "cudnn": ("gpu",)}
# The memory-efficient attention of each platform: what model.attention = "auto" runs there.
MEMORY_EFFICIENT: dict[str, str] = {"tpu": "splash", "gpu": "cudnn", "cpu": "chunked"}
AUTO = "auto"
CHOICES = (AUTO, *NAMES)  # what model.attention accepts


def runs_on(name: str, platform: str) -> bool:
  """Whether model.attention = `name` can run on devices of `platform` ("cpu", "gpu", "tpu")."""
  allowed = BACKENDS[name]
  return allowed is None or platform in allowed


def memory_efficient(platform: str) -> str:
  """The model.attention to use on `platform`: its memory-efficient kernel (chunked where none is native)."""
  return MEMORY_EFFICIENT.get(platform, "chunked")


def resolve(name: str, platform: str) -> str:
  """The attention model.attention = `name` runs on devices of `platform`: "auto" is that platform's
  memory-efficient kernel (`memory_efficient`), so one config runs on TPU, GPU and CPU; any other name is
  itself."""
  return memory_efficient(platform) if name == AUTO else name
