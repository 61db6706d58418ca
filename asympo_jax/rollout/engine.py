"""The continuous-batching rollout engine: S decode slots per data shard over a KV cache of S rows.

`Engine(model, cfg.rollout, eos_ids, pad_id, mesh)` has the static `Sampler`'s interface and returns the same
`Samples` (rows group-contiguous, padded to max_new_tokens), but its memory depends on the slot count and the
lengths, never on the number of rows: each slot holds one row's KV cache up to prompt bucket + max_new_tokens.
rollout.engine selects it; rollout.slots gives S, or rollout.kv_memory_mb a budget S follows from
(`slot_count`).

A batch whose rows all fit in the slots at once (S x shards >= rows) runs as one static wave: the static
sampler's program, which is what the slot loop would do, only faster. Otherwise, the loop (host side,
`Engine.generate`), per data shard over its contiguous block of rows (as the static sampler
splits them):
- admit: the next waiting rows enter the free slots. One `admit` program prefills the distinct prompts of the
  admitted rows in one batch (a prompt with several admitted samples is prefilled once; its rows copy the
  result) and chooses each admitted row's first token.
- decode: one `decode` program runs a `lax.while_loop` of decode steps over all slots on the device, checking
  every EXIT_CHECK_STEPS steps whether a shard has enough free slots to refill (`refill_threshold`) or every
  slot has finished; finished slots just idle until then. Rows end at EOS, a stop sequence or max_new_tokens.
- the host copies the finished slots' rows out, and admits again, until no row is left.
The host round trip per refill (not per token) carries a few [S] arrays; the slots' [S, N] tokens come back
only when some of them finished.

Same samples: a row's tokens depend only on (seed, step, prompt id, sample index) and the parameters, never on
its slot or on when it entered: row b draws its t-th token at the t-th uniform number of its row key
(sampling.row_keys), its prompt sits at the same cache slots and positions as in the static sampler (same
prompt bucket), and attention masks each row to its own causal prefix. What XLA:CPU does not promise is
bitwise independence of the batch size: a matmul's row can round differently with 1 or 64 rows in the batch
(it does; the static sampler's own log-probs move by about 1e-6 when the batch around a row changes), so
log-probs agree to float32 rounding and tokens agree unless a draw falls within that rounding of a boundary.

Under a mesh the slot arrays are [shards * S, ...], split over data x fsdp like the static sampler's rows;
each shard schedules only its own rows into its own slots, so the decode loop needs no communication beyond
the exit check's all-reduce.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from asympo_jax.common.checks import check
from asympo_jax.common.sharding import constrain, logical_sharding, row_shards
from asympo_jax.model import kv_cache as kvc
from asympo_jax.model.architecture import ModelConfig
from asympo_jax.model.decoder import Decoder, cast_params, positions_of, rope_inputs
from asympo_jax.rollout import token_choice as sampling
from asympo_jax.rollout.sampler import (EXIT_CHECK_STEPS, DecodeSpec, Sampler, Samples, decode_spec, logits_of,
                                        pad_prompts, program_bytes, prompt_bucket, restack, speed_stats,
                                        split_layers)

ENGINES = ("static", "continuous")  # rollout.engine (`make_sampler`)


def validate(cfg_rollout: ml_collections.ConfigDict) -> None:
  """Checks rollout.engine, rollout.slots and rollout.kv_memory_mb."""
  check(cfg_rollout.engine in ENGINES, "rollout.engine",
        f"must be one of {', '.join(ENGINES)}, got {cfg_rollout.engine!r}")
  slots, budget = cfg_rollout.slots, cfg_rollout.kv_memory_mb
  check(isinstance(slots, int) and slots >= 0, "rollout.slots",
        f"must be an integer >= 1, or 0 to follow from rollout.kv_memory_mb; got {slots!r}")
  check(isinstance(budget, (int, float)) and budget >= 0, "rollout.kv_memory_mb", f"must be >= 0, got {budget!r}")
  check((slots > 0) != (budget > 0), "rollout.slots",
        f"give exactly one of rollout.slots ({slots}) and rollout.kv_memory_mb ({budget}); the other must be 0")
  check(cfg_rollout.engine == "static" or cfg_rollout.micro_batches == 1, "rollout.micro_batches",
        f"must be 1 with rollout.engine=continuous, whose memory rollout.slots bounds; got "
        f"{cfg_rollout.micro_batches}")


def slot_bytes(cfg: ModelConfig, max_prompt_len: int, max_new_tokens: int, dtype: str | None = None) -> int:
  """KV cache bytes of one slot: layers x (keys + values) x KV heads x head_dim x slots x dtype size, the
  slots being the longest prompt bucket + max_new_tokens, rounded up to whole key chunks."""
  itemsize = jnp.dtype(dtype or cfg.dtype).itemsize  # the cache is in the compute dtype (kv_cache.init_cache)
  length = kvc.chunked_slots(max_prompt_len + max_new_tokens)
  return cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * length * itemsize


def slot_count(cfg: ModelConfig, cfg_rollout: ml_collections.ConfigDict) -> int:
  """S, the decode slots per data shard: rollout.slots, or as many as rollout.kv_memory_mb (MiB per shard)
  holds, at least one."""
  if cfg_rollout.slots:
    return cfg_rollout.slots
  per_slot = slot_bytes(cfg, cfg_rollout.max_prompt_len, cfg_rollout.max_new_tokens)
  return max(1, int(cfg_rollout.kv_memory_mb * 2**20 // per_slot))


def refill_threshold(slots: int) -> int:
  """How many free slots of a shard end a decode call so the host can refill them: an eighth of the slots.
  Fewer means more host round trips and prefill calls per batch; more leaves finished slots idle longer."""
  return max(1, slots // 8)


class Slots(NamedTuple):
  """Device state of the decode slots; S = shards x slots per shard, N = max_new_tokens."""
  cache: kvc.KVCache  # index [S]: each slot's next write slot
  tokens_SxN: jax.Array  # int32, pad after the end
  logprobs_SxN: jax.Array  # float32, 0 after the end
  uniforms_SxN: jax.Array  # float32, the row's uniform numbers (sampling.row_uniforms)
  recent_SxW: jax.Array  # int32, the last W tokens (for stop sequences), -1 before the response
  step_S: jax.Array  # int32, tokens emitted so far: the response length once the slot is not live
  live_S: jax.Array  # bool, still decoding
  finish_S: jax.Array  # int32, index into sampling.FINISH_REASONS
  position_S: jax.Array  # int32, position of the prompt's last token


def slot_axes(slots: Slots) -> Slots:
  """The logical axes of every field of `slots` (arrays or shapes): the slots split like rows."""
  rows = lambda x: ("act_batch",) + (None,) * (len(x.shape) - 1)
  return Slots(kvc.cache_axes(len(slots.cache.k))._replace(index=("act_batch",)), *map(rows, slots[1:]))


def _constrain_slots(slots: Slots) -> Slots:
  return jax.tree.map(constrain, slots, slot_axes(slots))  # each array of `slots` takes its tuple of axis names


@functools.partial(jax.jit, static_argnames=("cfg", "slots", "length", "window", "spec"))
def empty_slots(cfg: ModelConfig, slots: int, length: int, window: int, spec: DecodeSpec) -> Slots:
  """`slots` free slots with a KV cache of `length` positions each."""
  n = spec.max_new_tokens
  cache = kvc.init_cache(cfg, slots, length)._replace(index=jnp.zeros((slots,), jnp.int32))
  return _constrain_slots(Slots(
      cache, jnp.full((slots, n), spec.pad_id, jnp.int32), jnp.zeros((slots, n), jnp.float32),
      jnp.zeros((slots, n), jnp.float32), jnp.full((slots, window), -1, jnp.int32), jnp.zeros((slots,), jnp.int32),
      jnp.zeros((slots,), bool), jnp.zeros((slots,), jnp.int32), jnp.zeros((slots,), jnp.int32)))


def emit(slots: Slots, logits_SxV: jax.Array, emitting_S: jax.Array, eos_E: jax.Array, spec: DecodeSpec) -> Slots:
  """Chooses the next token (index step_S) of every emitting slot and retires the slots whose row ends."""
  n = spec.max_new_tokens
  rows_S = jnp.arange(emitting_S.shape[0])
  i_S = jnp.minimum(slots.step_S, n - 1)
  uniform_S = jnp.take_along_axis(slots.uniforms_SxN, i_S[:, None], 1)[:, 0]
  token_S, logprob_S = sampling.choose_scored(logits_SxV, uniform_S, spec.temperature, spec.top_k, spec.top_p,
                                              spec.logprobs)
  tokens = slots.tokens_SxN.at[rows_S, i_S].set(jnp.where(emitting_S, token_S, slots.tokens_SxN[rows_S, i_S]))
  logprobs = slots.logprobs_SxN
  if spec.logprobs:
    logprobs = logprobs.at[rows_S, i_S].set(jnp.where(emitting_S, logprob_S, logprobs[rows_S, i_S]))
  recent = jnp.where(emitting_S[:, None], jnp.concatenate([slots.recent_SxW[:, 1:], token_S[:, None]], axis=1),
                     slots.recent_SxW)
  is_eos = emitting_S & jnp.isin(token_S, eos_E)
  is_stop = emitting_S & ~is_eos & sampling.stop_sequence_hit(recent, spec.stop_sequences)
  step = slots.step_S + emitting_S
  ends = is_eos | is_stop | (emitting_S & (step >= n))
  return slots._replace(tokens_SxN=tokens, logprobs_SxN=logprobs, recent_SxW=recent, step_S=step,
                        live_S=slots.live_S & ~ends,
                        finish_S=jnp.where(is_eos, 1, jnp.where(is_stop, 2, slots.finish_S)))


def _per_shard(x_QxF: jax.Array, src_S: jax.Array, shards: int) -> jax.Array:
  """Row src_S[s] of slot s's own shard's block of x (Q = shards x prompts per shard): a gather that stays
  inside each shard."""
  x = x_QxF.reshape(shards, -1, *x_QxF.shape[1:])
  index = jnp.maximum(src_S, 0).reshape(shards, -1)
  return jax.vmap(lambda block, i: block[i])(x, index).reshape(-1, *x_QxF.shape[1:])


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "shards"), donate_argnames=("slots",))
def admit(graphdef: nnx.GraphDef, state: nnx.State, slots: Slots, prompt_QxL: jax.Array, prompt_mask_QxL: jax.Array,
          prompt_rope: tuple[jax.Array, jax.Array] | None, src_S: jax.Array, keys_S: jax.Array, eos_E: jax.Array,
          spec: DecodeSpec, shards: int) -> Slots:
  """Prefills Q left-padded prompts (Q / shards per shard) and puts prompt src_S[s] of its shard's block in
  every slot s with src_S[s] >= 0 (the others keep their state), with its row key keys_S[s]; chooses the
  first token of each new row."""
  model = nnx.merge(graphdef, state)
  prompts, prompt_len = prompt_QxL.shape
  positions_QxL = positions_of(prompt_mask_QxL)
  hidden, prefill = model(prompt_QxL, positions_QxL, prompt_mask_QxL,
                          kvc.init_cache(model.cfg, prompts, prompt_len), rope=prompt_rope)
  new_S = src_S >= 0
  take = functools.partial(_per_shard, src_S=src_S, shards=shards)

  def put(old, fresh):  # the new rows' prefix of a cache buffer: the prompt's slots; later ones stay masked
    prefix = fresh.shape[2]
    keep = jax.lax.slice_in_dim(old, 0, prefix, axis=2)
    mixed = jnp.where(new_S.reshape(-1, *(1,) * (old.ndim - 1)), take(fresh), keep)
    return jax.lax.dynamic_update_slice_in_dim(old, mixed, 0, axis=2)

  cache = slots.cache
  fresh_mask = take(prefill.mask_BxS)
  fresh_mask = jnp.pad(fresh_mask, ((0, 0), (0, cache.mask_BxS.shape[1] - fresh_mask.shape[1])))
  cache = kvc.KVCache(tuple(map(put, cache.k, prefill.k)), tuple(map(put, cache.v, prefill.v)),
                      jnp.where(new_S[:, None], fresh_mask, cache.mask_BxS),
                      jnp.where(new_S, prefill.index, cache.index))
  new = lambda fresh, old: jnp.where(new_S.reshape(-1, *(1,) * (old.ndim - 1)), fresh, old)
  slots = Slots(cache, new(spec.pad_id, slots.tokens_SxN), new(0.0, slots.logprobs_SxN),
                new(sampling.row_uniforms(keys_S, spec.max_new_tokens), slots.uniforms_SxN),
                new(-1, slots.recent_SxW), new(0, slots.step_S), slots.live_S | new_S, new(0, slots.finish_S),
                new(take(positions_QxL[:, -1]), slots.position_S))
  logits_SxV = constrain(take(logits_of(model, hidden[:, -1])), ("act_batch", "act_vocab"))
  return _constrain_slots(emit(slots, logits_SxV, new_S, eos_E, spec))


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "shards"), donate_argnames=("slots",))
def decode(graphdef: nnx.GraphDef, state: nnx.State, slots: Slots, refill_at_D: jax.Array, eos_E: jax.Array,
           spec: DecodeSpec, shards: int) -> tuple[Slots, jax.Array]:
  """Decode steps for every live slot until some shard d has refill_at_D[d] free slots or none is live
  (checked every EXIT_CHECK_STEPS steps). Returns the slots and the number of steps run."""
  model = nnx.merge(graphdef, state)
  length = slots.cache.mask_BxS.shape[1]
  cos_1xT, sin_1xT = model.rope(jnp.arange(length)[None])  # every position's RoPE, computed before the loop
  split_state = split_layers(state)

  def step(slots: Slots) -> Slots:
    i_S = slots.step_S
    tokens_Sx1 = jnp.take_along_axis(slots.tokens_SxN, jnp.maximum(i_S - 1, 0)[:, None], 1)
    positions_Sx1 = (slots.position_S + i_S)[:, None]
    rope = (cos_1xT[0][positions_Sx1], sin_1xT[0][positions_Sx1])
    decoder = nnx.merge(graphdef, restack(split_state))
    hidden, cache = decoder(tokens_Sx1, positions_Sx1, jnp.ones_like(tokens_Sx1), slots.cache, rope=rope)
    cache = cache._replace(index=jnp.where(slots.live_S, cache.index, slots.cache.index))
    return emit(slots._replace(cache=cache), logits_of(decoder, hidden[:, 0]), slots.live_S, eos_E, spec)

  def cond(loop):
    slots, _ = loop
    free_D = (~slots.live_S).reshape(shards, -1).sum(1)
    return jnp.any(slots.live_S) & ~jnp.any(free_D >= refill_at_D)

  def steps(loop):
    slots, count = loop
    return jax.lax.fori_loop(0, EXIT_CHECK_STEPS, lambda _, s: step(s), slots), count + EXIT_CHECK_STEPS

  slots, count = jax.lax.while_loop(cond, steps, (slots, jnp.int32(0)))
  return _constrain_slots(slots), count


class Engine:
  """Host-side scheduler over `admit` and `decode`; `generate` as `Sampler.generate`."""

  def __init__(self, model: Decoder, cfg_rollout: ml_collections.ConfigDict, eos_ids: Sequence[int],
               pad_id: int, mesh: Mesh | None = None) -> None:
    validate(cfg_rollout)
    self.graphdef = nnx.graphdef(model)
    self.model_cfg = model.cfg
    self.cfg = cfg_rollout
    self.mesh = mesh
    self.spec = decode_spec(cfg_rollout, pad_id)
    self.shards = row_shards(mesh)
    # Slots beyond a shard's rows would only idle.
    rows = cfg_rollout.prompts_per_step * cfg_rollout.group_size
    self.slots = min(slot_count(model.cfg, cfg_rollout), -(-rows // self.shards))
    self.window = max([len(s) for s in self.spec.stop_sequences], default=1)
    self.eos_ids_E = np.asarray(eos_ids, np.int32)
    # A batch whose rows all fit in the slots at once never refills: it runs as one static wave, through the
    # static sampler's program, whose decode segments read a shorter cache early on (on the uniform `tiny`
    # workload the slot loop was about 20% slower than it; docs/benchmarks.md).
    self.one_wave = Sampler(model, cfg_rollout, eos_ids, pad_id, mesh) if rows <= self.slots * self.shards else None

  def _put(self, x: np.ndarray) -> jax.Array | np.ndarray:
    if self.mesh is None:
      return x
    return jax.device_put(x, logical_sharding(("act_batch",) + (None,) * (x.ndim - 1), x.shape, self.mesh))

  def generate(self, state: nnx.State, prompts: Sequence[Sequence[int]], *, seed: int, step: int,
               prompt_ids: Sequence[int] | None = None) -> Samples:
    """G samples of each prompt, rows group-contiguous, as `Sampler.generate`."""
    if self.one_wave is not None and len(prompts) * self.cfg.group_size <= self.slots * self.shards:
      return self.one_wave.generate(state, prompts, seed=seed, step=step, prompt_ids=prompt_ids)
    start = time.perf_counter()
    # The compute-dtype copy of the weights, once per call rather than in every decode step (a no-op when the
    # published copy already is, as run.make_transfer makes it).
    state = cast_params(state, self.model_cfg.dtype)
    with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
      out, counts = self._generate(state, prompts, seed, step, prompt_ids)
    seconds = time.perf_counter() - start
    stats = speed_stats(out.mask_BxN, counts["decode_steps"] * self.slots * self.shards, seconds)
    stats["rollout/prefill_share"] = counts["prefill_seconds"] / seconds
    return out._replace(stats=stats)

  def compiled_bytes(self, state: nnx.State, prompts: Sequence[Sequence[int]]) -> int:
    """Memory of the decode program plus the widest admit program (S prompts per shard) for the prompt
    bucket of `prompts` (`program_bytes`): nothing in them has a dimension of rows."""
    bucket = pad_prompts(prompts, self.cfg.max_prompt_len, self.spec.pad_id)[0].shape[1]
    return sum(program_bytes(lowered) for lowered in self.lower(state, bucket))

  def lower(self, state: nnx.State, bucket: int | None = None) -> list[jax.stages.Lowered]:
    """The decode program and the widest admit program (S prompts per shard) for prompts padded to `bucket`
    (default: the longest bucket), lowered from shapes alone: `state` may be abstract (jax.ShapeDtypeStruct
    leaves on the engine's mesh), as the plan gives it. A batch that runs as one static wave: the static
    sampler's program (of the longest bucket), which is what `generate` runs then."""
    if self.one_wave is not None:
      return [self.one_wave.lower(state)]
    D, S = self.shards, self.slots
    bucket = bucket or prompt_bucket(self.cfg.max_prompt_len, self.cfg.max_prompt_len)
    shape = lambda x, axes: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=None if self.mesh is None else logical_sharding(axes, x.shape, self.mesh))
    rows = lambda dims, dtype: shape(jax.ShapeDtypeStruct(dims, dtype), ("act_batch",) + (None,) * (len(dims) - 1))
    with self._mesh_context():
      slots = jax.eval_shape(functools.partial(empty_slots, self.model_cfg, D * S, bucket + self.spec.max_new_tokens,
                                               self.window, self.spec))
      slots = jax.tree.map(shape, slots, slot_axes(slots))
      eos = shape(jax.ShapeDtypeStruct(self.eos_ids_E.shape, jnp.int32), (None,))
      prompt, mask = rows((D * S, bucket), jnp.int32), rows((D * S, bucket), jnp.int32)
      rope = jax.eval_shape(functools.partial(rope_inputs, self.graphdef), mask, state)
      return [decode.lower(self.graphdef, state, slots, rows((D,), jnp.int32), eos, spec=self.spec, shards=D),
              admit.lower(self.graphdef, state, slots, prompt, mask, rope, rows((D * S,), jnp.int32),
                          rows((D * S, 2), jnp.uint32), eos, spec=self.spec, shards=D)]

  def _mesh_context(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  @functools.cached_property
  def _eos_on_devices(self) -> jax.Array | np.ndarray:
    """The EOS ids, placed once on the mesh at the first generate (every call reads them)."""
    if self.mesh is None:
      return self.eos_ids_E
    return jax.device_put(self.eos_ids_E, NamedSharding(self.mesh, PartitionSpec()))

  def _generate(self, state, prompts, seed, step, prompt_ids):
    group, n, S, D = self.cfg.group_size, self.spec.max_new_tokens, self.slots, self.shards
    prompt_PxL, mask_PxL = pad_prompts(prompts, self.cfg.max_prompt_len, self.spec.pad_id)
    bucket = prompt_PxL.shape[1]
    rows = len(prompts) * group
    ids = np.arange(len(prompts)) if prompt_ids is None else np.asarray(prompt_ids)
    keys_Bx2 = np.asarray(sampling.row_keys(seed, step, ids, group))
    # Each shard's rows: a contiguous block, as the static sampler's rows split over the mesh.
    pending = [collections.deque(block.tolist()) for block in np.array_split(np.arange(rows), D)]
    held = np.full((D, S), -1)  # the row in each slot, -1: free
    tokens_BxN = np.full((rows, n), self.spec.pad_id, np.int32)
    logprobs_BxN = np.zeros((rows, n), np.float32)
    lengths_B = np.zeros(rows, np.int32)
    finish_B = np.zeros(rows, np.int32)
    slots = empty_slots(self.model_cfg, D * S, bucket + n, self.window, self.spec)
    threshold = refill_threshold(S)
    counts = {"decode_steps": 0, "prefill_seconds": 0.0, "prefills": 0}
    while True:
      slots = self._admit(state, slots, pending, held, prompt_PxL, mask_PxL, keys_Bx2, counts)
      if (held < 0).all():
        break
      refill_at_D = np.array([min(threshold, len(q)) if q else S + 1 for q in pending], np.int32)
      slots, ran = decode(self.graphdef, state, slots, self._put(refill_at_D), self._eos_on_devices, spec=self.spec, shards=D)
      live_S, step_S, finish_S = jax.device_get((slots.live_S, slots.step_S, slots.finish_S))
      counts["decode_steps"] += int(ran)
      done_S = (held.reshape(-1) >= 0) & ~live_S
      if done_S.any():
        tokens_SxN, logprobs_SxN = jax.device_get((slots.tokens_SxN, slots.logprobs_SxN))
        rows_done = held.reshape(-1)[done_S]
        tokens_BxN[rows_done] = tokens_SxN[done_S]
        logprobs_BxN[rows_done] = logprobs_SxN[done_S]
        lengths_B[rows_done] = step_S[done_S]
        finish_B[rows_done] = finish_S[done_S]
        held.reshape(-1)[done_S] = -1
    mask_BxN = (np.arange(n)[None, :] < lengths_B[:, None]).astype(np.int32)
    samples = Samples(tokens_BxN, mask_BxN, finish_B, logprobs_BxN if self.spec.logprobs else None,
                      counts["decode_steps"] + counts["prefills"])
    return samples, counts

  def _admit(self, state, slots, pending, held, prompt_PxL, mask_PxL, keys_Bx2, counts) -> Slots:
    """Moves the next waiting rows of every shard into its free slots (in place on `pending` and `held`)."""
    D, S, group = self.shards, self.slots, self.cfg.group_size
    src_DxS = np.full((D, S), -1)
    keys_DxSx2 = np.zeros((D, S, 2), np.uint32)
    chosen = []  # per shard, the distinct prompts to prefill, in order
    for d in range(D):
      order: dict[int, int] = {}
      for s in np.flatnonzero(held[d] < 0):
        if not pending[d]:
          break
        row = pending[d].popleft()
        held[d, s] = row
        src_DxS[d, s] = order.setdefault(row // group, len(order))
        keys_DxSx2[d, s] = keys_Bx2[row]
      chosen.append(list(order))
    width = max(map(len, chosen))
    if width == 0:
      return slots
    width = min(1 << (width - 1).bit_length(), S)  # a few compiled prefill sizes: powers of two up to S
    pick = np.array([c + [c[0] if c else 0] * (width - len(c)) for c in chosen]).reshape(-1)
    arrays = tuple(self._put(x) for x in (prompt_PxL[pick], mask_PxL[pick], src_DxS.reshape(-1).astype(np.int32),
                                          keys_DxSx2.reshape(D * S, 2)))
    t0 = time.perf_counter()
    rope = rope_inputs(self.graphdef, arrays[1], state)
    slots = admit(self.graphdef, state, slots, arrays[0], arrays[1], rope, *arrays[2:], self._eos_on_devices, spec=self.spec,
                  shards=D)
    jax.block_until_ready(slots.step_S)
    counts["prefill_seconds"] += time.perf_counter() - t0
    counts["prefills"] += 1
    return slots


def make_sampler(model: Decoder, cfg_rollout: ml_collections.ConfigDict, eos_ids: Sequence[int], pad_id: int,
                 mesh: Mesh | None = None) -> Sampler | Engine:
  """The sampler rollout.engine names: the static `Sampler` or the continuous-batching `Engine`."""
  return {"static": Sampler, "continuous": Engine}[cfg_rollout.engine](model, cfg_rollout, eos_ids, pad_id, mesh)
