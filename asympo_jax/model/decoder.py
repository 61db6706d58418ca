"""The decoder-only transformer (Qwen2 / Qwen3 / Llama families) in Flax NNX.

`Decoder(cfg, rngs=...)` holds the parameters; `decoder(tokens_BxT, positions_BxT, mask_BxT, cache=None)`
returns the hidden states after the final norm and the updated KV cache (see kv_cache.py); `unembedding()`
gives the [D, V] output projection (the tied embedding's transpose when tied).

Layer parameters are stacked along a leading "layers" axis whatever `scan_layers` says, so checkpoints do not
depend on it: `scan_layers` runs the layers with `lax.scan` (one compiled layer), otherwise a Python loop
(unrolled). Calls with a KV cache always unroll (see `Decoder.__call__`). Layer math is a pure function of a
dict of per-layer arrays.

Precision: parameters are stored in `param_dtype` and cast to the compute `dtype` where a layer uses them
(MaxText's weight_dtype / dtype), so with float32 master weights the gradients are float32 too; activations
and the KV cache are in `dtype`. Always float32 whatever `dtype`: RMSNorm statistics, RoPE tables and
rotations, attention scores and softmax, and the logits.

Attention: a decode step attends with `attention` below (the plain form, which reads the cache in place); the
multi-token calls (the train step, a prefill) with `cfg.attention`: the same plain form, or a
memory-efficient one from attention.py.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from asympo_jax.common import cpu
from asympo_jax.model import attention as attention_lib
from asympo_jax.model import kv_cache as kvc
from asympo_jax.model.architecture import Llama3RopeScaling, ModelConfig
from asympo_jax.common.sharding import constrain, state_shardings

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  shape: tuple[int, ...]  # per layer for layer params
  axes: tuple[str, ...]  # logical axes, one per dim of `shape`
  init: str  # normal | ones | zeros


def layer_param_specs(cfg: ModelConfig) -> dict[str, ParamSpec]:
  """Per-layer parameters (stored stacked as [L, *shape]), by name."""
  D, H, K, hd, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  specs = {
      "input_norm": ParamSpec((D,), ("norm",), "ones"),
      "q": ParamSpec((D, H, hd), ("embed", "heads", "head_dim"), "normal"),
      "k": ParamSpec((D, K, hd), ("embed", "kv_heads", "head_dim"), "normal"),
      "v": ParamSpec((D, K, hd), ("embed", "kv_heads", "head_dim"), "normal"),
      "o": ParamSpec((H, hd, D), ("heads", "head_dim", "embed"), "normal"),
      "post_norm": ParamSpec((D,), ("norm",), "ones"),
      "gate": ParamSpec((D, F), ("embed", "mlp"), "normal"),
      "up": ParamSpec((D, F), ("embed", "mlp"), "normal"),
      "down": ParamSpec((F, D), ("mlp", "embed"), "normal"),
  }
  if cfg.qkv_bias:
    specs.update(q_bias=ParamSpec((H, hd), ("heads", "head_dim"), "zeros"),
                 k_bias=ParamSpec((K, hd), ("kv_heads", "head_dim"), "zeros"),
                 v_bias=ParamSpec((K, hd), ("kv_heads", "head_dim"), "zeros"))
  if cfg.o_bias:
    specs["o_bias"] = ParamSpec((D,), ("norm",), "zeros")
  if cfg.mlp_bias:
    specs.update(gate_bias=ParamSpec((F,), ("mlp",), "zeros"), up_bias=ParamSpec((F,), ("mlp",), "zeros"),
                 down_bias=ParamSpec((D,), ("norm",), "zeros"))
  if cfg.qk_norm:
    specs.update(q_norm=ParamSpec((hd,), ("head_dim",), "ones"), k_norm=ParamSpec((hd,), ("head_dim",), "ones"))
  return specs


def top_param_specs(cfg: ModelConfig) -> dict[str, ParamSpec]:
  specs = {
      "embed": ParamSpec((cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), "normal"),
      "final_norm": ParamSpec((cfg.hidden_size,), ("norm",), "ones"),
  }
  if not cfg.tie_embeddings:
    specs["lm_head"] = ParamSpec((cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), "normal")
  return specs


def _init(spec: ParamSpec, shape: tuple[int, ...], cfg: ModelConfig, key: jax.Array) -> jax.Array:
  if spec.init == "normal":
    return cfg.initializer_range * jax.random.normal(key, shape, cfg.param_dtype)
  return (jnp.ones if spec.init == "ones" else jnp.zeros)(shape, cfg.param_dtype)


class Decoder(nnx.Module):
  """Parameters: `embed`, `final_norm`, `lm_head` (untied only) and `layers[name]` stacked as [L, ...]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    for name, spec in top_param_specs(cfg).items():
      setattr(self, name, nnx.Param(_init(spec, spec.shape, cfg, rngs.params()), logical_axes=spec.axes))
    self.layers = nnx.Dict({
        name: nnx.Param(_init(spec, (cfg.num_layers, *spec.shape), cfg, rngs.params()),
                        logical_axes=("layers", *spec.axes))
        for name, spec in layer_param_specs(cfg).items()
    })

  def unembedding(self) -> jax.Array:
    """[D, V]."""
    return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

  def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
    """float32 [B, T, V] logits of hidden states from `__call__`."""
    logits = jnp.einsum("btd,dv->btv", hidden_BxTxD, self.unembedding(), preferred_element_type=jnp.float32)
    return constrain(logits, ("act_batch", "act_seq", "act_vocab"))

  def rope(self, positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The RoPE cos and sin of `positions_BxT`, each float32 [B, T, head_dim / 2]."""
    cfg = self.cfg
    return rope_cos_sin(positions_BxT, rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array, mask_BxT: jax.Array,
               cache: kvc.KVCache | None = None, rope: tuple[jax.Array, jax.Array] | None = None
               ) -> tuple[jax.Array, kvc.KVCache | None]:
    """Hidden states [B, T, D] after the final norm, and the cache with the T new tokens written in.

    `rope`, when given, is `self.rope(positions_BxT)` computed by the caller: a decode loop computes it for
    all its steps before the loop, and the train step and the sampler's prefill get it from `rope_inputs`
    (common/cpu.py says why).
    """
    cfg = self.cfg
    h = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(cfg.dtype)
    h = constrain(h, ("act_batch", "act_seq", "act_embed"))
    cos_sin = self.rope(positions_BxT) if rope is None else rope
    num_new = tokens_BxT.shape[1]
    efficient = memory_efficient(cfg, num_new)
    if cache is None:
      attn_mask = mask_BxT if efficient else kvc.attention_mask(mask_BxT, jnp.zeros((), jnp.int32), num_new)
    else:
      slot_mask = kvc.update_mask(cache, mask_BxT)
      attn_mask = mask_BxT if efficient else kvc.attention_mask(slot_mask, cache.index, num_new)

    layer = _remat(cfg, functools.partial(layer_forward, cfg))
    layer_params = {name: p[...] for name, p in self.layers.items()}
    if cache is None and cfg.scan_layers:
      h, _ = jax.lax.scan(lambda h, params: (layer(params, h, cos_sin, attn_mask, None)[0], None), h, layer_params)
    else:
      # With a cache the layers always unroll: each reads and updates its own cache buffers in place, which a
      # scanned layer could only do through a slice of a stacked buffer (a copy of it, see kv_cache.py).
      new_k, new_v = [], []
      for i in range(cfg.num_layers):
        past = None if cache is None else (cache.k[i], cache.v[i], cache.index)
        h, kv = layer(jax.tree.map(lambda x: x[i], layer_params), h, cos_sin, attn_mask, past)
        if kv is not None:
          new_k.append(kv[0])
          new_v.append(kv[1])
    h = rms_norm(h, self.final_norm[...].astype(cfg.dtype), cfg.rms_norm_eps)
    if cache is None:
      return h, None
    if efficient:
      # A memory-efficient attention sees only the T new tokens: right for a prefill into an empty cache, the
      # one multi-token call with a cache. Into a cache that holds tokens it would be silently wrong: NaN instead.
      h = jnp.where(cache.index == 0, h, jnp.nan)
    return h, kvc.KVCache(tuple(new_k), tuple(new_v), slot_mask, cache.index + num_new)


def _remat(cfg: ModelConfig, fn: Any) -> Any:
  if cfg.remat == "none":
    return fn
  return jax.checkpoint(fn, policy=_REMAT_POLICIES[cfg.remat])


def memory_efficient(cfg: ModelConfig, num_new: int) -> bool:
  """Whether a call with `num_new` tokens attends with cfg.attention rather than the plain form: the
  multi-token calls do (the train step, a prefill); a decode step of one token keeps the plain form, which
  reads the cache in place."""
  return cfg.attention != "plain" and num_new > 1


def layer_forward(cfg: ModelConfig, p: dict[str, jax.Array], h_BxTxD: jax.Array,
                  cos_sin: tuple[jax.Array, jax.Array], attn_mask: jax.Array,
                  past: tuple[jax.Array, jax.Array, jax.Array] | None
                  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
  """One pre-norm block. `past` = (k_BxKxCxhdxW, v_BxKxSxhd, index): this block's cache buffers (layouts in
  kv_cache.py) and the first slot to write, or None. `attn_mask`: the [B, T, S] visibility of the plain
  attention, or with a memory-efficient one (`memory_efficient`) the tokens' own mask [B, T].

  Returns the new hidden states and the updated (k, v) buffers (None without a cache).
  """
  p = cast_params(p, cfg.dtype)  # per layer, inside a scan or a remat: never a compute copy of every layer
  x = rms_norm(h_BxTxD, p["input_norm"], cfg.rms_norm_eps)
  q, k, v = _qkv(cfg, x, p)
  if cfg.qk_norm:
    q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  q = constrain(apply_rope(q, *cos_sin), ("act_batch", "act_seq", "act_heads", "head_dim"))
  k = constrain(apply_rope(k, *cos_sin), ("act_batch", "act_seq", "act_kv_heads", "head_dim"))
  efficient = memory_efficient(cfg, q.shape[1])
  if efficient:
    attn = attention_lib.ATTENTION[cfg.attention](q, k, v, attn_mask)
  k, v = jnp.transpose(k, (0, 2, 3, 1)), jnp.swapaxes(v, 1, 2)  # [B, K, hd, T], [B, K, T, hd]: the cache's layout
  new_kv = None
  if past is not None:
    k_cache, v_cache, index = past
    k, v = new_kv = kvc.write_keys(k_cache, k, index), kvc.write_values(v_cache, v, index)
  else:
    k = k[:, :, None]  # one chunk of T keys
  if not efficient:
    attn = attention(q, k, v, attn_mask)
  h_BxTxD = h_BxTxD + _proj(attn, p["o"], p.get("o_bias"))
  h_BxTxD = constrain(h_BxTxD, ("act_batch", "act_seq", "act_embed"))
  x = rms_norm(h_BxTxD, p["post_norm"], cfg.rms_norm_eps)
  gate = _proj(x, p["gate"], p.get("gate_bias"))
  up = _proj(x, p["up"], p.get("up_bias"))
  hidden = constrain(jax.nn.silu(gate) * up, ("act_batch", "act_seq", "act_mlp"))
  h_BxTxD = h_BxTxD + _proj(hidden, p["down"], p.get("down_bias"))
  return constrain(h_BxTxD, ("act_batch", "act_seq", "act_embed")), new_kv


def cast_params(params: Any, dtype: str) -> Any:
  """Every array of a parameter tree in `dtype` (the weights as computed with; a no-op when already so)."""
  return jax.tree.map(lambda x: x.astype(dtype), params)


def _qkv(cfg: ModelConfig, x_BxTxD: jax.Array, p: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Queries [B, T, H, hd], keys and values [B, T, K, hd] from one matmul.

  One [D, K, (G + 2) * hd] weight, the G query heads, the key and the value of each KV head side by side: on
  CPU one matmul of the three takes about half the time of three in a decode step (the small ones ran on one
  core).
  Concatenating inside each KV head keeps the kv_heads axis, so a tensor-sharded layer stays sharded.
  """
  D, K, hd = cfg.hidden_size, cfg.num_kv_heads, cfg.head_dim
  G = cfg.num_heads // K
  parts = [p["q"].reshape(D, K, G * hd), p["k"], p["v"]]
  w = jnp.concatenate(parts, axis=2)
  b = None
  if cfg.qkv_bias:
    b = jnp.concatenate([p["q_bias"].reshape(K, G * hd), p["k_bias"], p["v_bias"]], axis=1)
  q, k, v = jnp.split(_proj(x_BxTxD, w, b), [G * hd, (G + 1) * hd], axis=3)
  return q.reshape(*q.shape[:2], K * G, hd), k, v


def _proj(x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
  """x [B, T, *c] contracted over its trailing dims c with the leading dims of w [*c, *o] -> [B, T, *o].

  As one 2-D matmul: with 3-D einsums XLA:CPU wrote the activation gradients transposed for the weight
  gradients (slow strided copies), which the 2-D form avoids.
  """
  contracted = math.prod(x.shape[2:])
  y = (x.reshape(-1, contracted) @ w.reshape(contracted, -1)).reshape(*x.shape[:2], *w.shape[x.ndim - 2:])
  return y if b is None else y + b


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """RMS norm over the last axis in float32, like HF (normalise in f32, cast, then scale)."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale * normed.astype(x.dtype)


def attention(q_BxTxHxhd: jax.Array, k_BxKxCxhdxW: jax.Array, v_BxKxSxhd: jax.Array,
              mask_BxTxS: jax.Array) -> jax.Array:
  """Grouped-query attention with a float32 softmax; returns [B, T, H, hd]. Rows with no visible key are 0.

  Keys and values come in the cache's layouts (kv_cache.py: keys in C chunks of W slots, S = C * W) and the
  queries of each KV head are gathered as rows [B, K, G*T, hd], so both products are plain batched matmuls
  (over (B, K, C), resp. (B, K)) and a decode step reads the cache without transposing it. XLA:CPU ran each of
  the other arrangements it was given at a few GFLOP/s in decode: keys [B, K, S, hd] (a transposed right
  operand), and the output einsum'd straight to [B, T, K, G, hd] (it swapped the probs-values operands and
  contracted over non-minor axes).
  """
  B, T, H, hd = q_BxTxHxhd.shape
  K, C, W = k_BxKxCxhdxW.shape[1], k_BxKxCxhdxW.shape[2], k_BxKxCxhdxW.shape[4]
  G, S = H // K, C * W
  k = k_BxKxCxhdxW
  if T > 1 and C > 1:
    # Every chunk needs its own copy of the query rows; with many rows (a prefill) one copy of the keys in one
    # chunk is the cheaper of the two.
    k = kvc.key_slots(k)[:, :, None]
    C = 1
  q = q_BxTxHxhd.reshape(B, T, K, G, hd).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, hd)
  q = jnp.broadcast_to(q[:, :, None], (B, K, C, G * T, hd))
  scores = jnp.einsum("bkcqh,bkchw->bkcqw", q, k, preferred_element_type=jnp.float32)
  scores = scores.transpose(0, 1, 3, 2, 4).reshape(B, K, G * T, S) / math.sqrt(hd)
  mask = jnp.broadcast_to(mask_BxTxS[:, None, None], (B, 1, G, T, S)).reshape(B, 1, G * T, S)
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0)
  out = jnp.einsum("bkqs,bksh->bkqh", probs.astype(v_BxKxSxhd.dtype), v_BxKxSxhd)
  return out.reshape(B, K, G, T, hd).transpose(0, 3, 1, 2, 4).reshape(B, T, H, hd)


def positions_of(mask_BxT: jax.Array) -> jax.Array:
  """Positions of left-padded rows: the count of real tokens before each column (padding gets 0)."""
  return jnp.maximum(jnp.cumsum(mask_BxT, axis=1) - 1, 0)


def rope_inputs(graphdef: nnx.GraphDef, mask_BxT: jax.Array, *states: nnx.State
                ) -> tuple[jax.Array, jax.Array] | None:
  """`Decoder.rope(positions_of(mask_BxT))` of the model (graphdef, *states), compiled on its own, for the
  caller's `rope=`; None when cpu.ROPE_AS_INPUT is off (the model then computes it). Only the model's config
  is read; the states' arrays are not used."""
  if not cpu.ROPE_AS_INPUT:
    return None
  return _rope_program(graphdef, mask_BxT, *states)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _rope_program(graphdef: nnx.GraphDef, mask_BxT: jax.Array, *states: nnx.State) -> tuple[jax.Array, jax.Array]:
  return nnx.merge(graphdef, *states).rope(positions_of(mask_BxT))


def rope_inv_freq(head_dim: int, theta: float, scaling: Llama3RopeScaling | None) -> jax.Array:
  """[head_dim / 2] float32 inverse frequencies, with the llama3 frequency-dependent scaling when given."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is None:
    return inv_freq
  low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
  high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return jnp.where(medium, smoothed, scaled)


def rope_cos_sin(positions_BxT: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """float32 cos and sin, each [B, T, head_dim / 2]."""
  angles = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BxTxNxhd: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates the two halves of the head dim (HF's rotate_half convention), in float32."""
  x = x_BxTxNxhd.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  cos, sin = cos[:, :, None], sin[:, :, None]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BxTxNxhd.dtype)


def create_model(cfg: ModelConfig, seed: int, mesh: jax.sharding.Mesh | None = None) -> Decoder:
  """A randomly initialised Decoder (the same values with or without a mesh); with a mesh each parameter is
  created directly in its sharding."""
  make = lambda: Decoder(cfg, rngs=nnx.Rngs(seed))
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  shardings = None if mesh is None else state_shardings(abstract, mesh)
  state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings)()
  return nnx.merge(graphdef, state)
