"""The batched sampler: one prefill pass, then a decode loop inside jit over a fixed-size KV cache.

`Sampler(model, cfg.rollout, eos_ids, pad_id)` compiles `generate(state, prompts, seed=, step=)` for a few
shapes only: the batch size is fixed (prompts_per_step * group_size rows) and the prompt length is bucketed
(powers of two from 16 up to rollout.max_prompt_len). The decode loop is a `lax.while_loop` of at most
rollout.max_new_tokens steps that exits once every row has finished (EOS or a stop sequence), checked every
EXIT_CHECK_STEPS steps: with the rows split over devices the check is an all-reduce, and at every token it
made the devices wait for each other (measurably slower `tiny` generation on 2 CPU devices). A batch that
finishes early thus runs at most EXIT_CHECK_STEPS - 1 steps more than it needs; finished rows emit padding, so
the samples do not change. With no EOS id and no stop sequence no row can end early, and the loop checks
nothing, so the devices never synchronise inside it. The KV
cache is allocated inside the jitted function and lives in the loop carry, which XLA updates
in place, so it is never copied between steps nor held between calls.

Decode segments (rollout.decode_segments = J): attention reads the whole cache, valid slots or not, so the
prefill writes into a cache as long as the prompt, and the decode loop runs in J segments, each a
`lax.while_loop` over a cache just long enough for it (`cache_lengths`); the cache grows (one copy) before
each. Each segment compiles its own loop body. On the `tiny` generation workload (docs/design.md §10) J = 2
cut the generate time by about 5%.

Groups: each of the P prompts is prefilled once; its cache and first-token logits are then repeated for its G
rows, so the prefill costs P rather than P * G rows (about half the embedded default's generate time).
Under a mesh the prompts split over the data x fsdp shards when they divide evenly; otherwise every shard
prefills them all and keeps its own rows of the repeated cache.

Randomness: row p*G + g draws its t-th token at the t-th of the uniform numbers drawn from its row key, which
depends on (seed, step, prompt id, g) only (sampling.row_keys), so a response never depends on the rest of the
batch.

Precision: generate computes with a copy of the weights in the model's compute dtype (model.dtype), made once
per call unless the published parameters already are (run.make_transfer casts them), and a KV cache in that
dtype; the logits and behaviour log-probs are float32.

Behaviour log-probs (rollout.record_behaviour_logprobs, used by the behaviour-corrected baselines and the
diagnostics) are float32, at the sampled token. rollout.behaviour_logprobs = "raw" records the log-softmax of
the *untempered, unfiltered* model logits; with temperature != 1 or top-k/top-p these are not the log-probs of
the distribution the token was drawn from, and importance ratios against them are biased (under top-p alone
they are off by log S per token, S the nucleus's mass). "sampled" records those of the distribution actually
sampled: tempered, filtered and renormalised (`sampling.sampling_logits`).

With `mesh`, the prompts' rows and so the cache and the whole decode are split over its data x fsdp shards;
the parameters must already be laid out on that mesh (run.make_transfer puts published ones there). The
mesh is the training one, or the disjoint rollout.devices (`rollout_mesh`). Without it, jit runs on the
devices the parameters are on, and with parameters on several devices every one of them samples the whole
batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from asympo_jax.model import kv_cache as kvc
from asympo_jax.rollout import token_choice as sampling
from asympo_jax.common.checks import ConfigError, check
from asympo_jax.model.decoder import Decoder, cast_params, positions_of, rope_inputs
from asympo_jax.common.sharding import constrain, data_mesh, logical_sharding, row_shards

MIN_PROMPT_BUCKET = 16
EXIT_CHECK_STEPS = 8


def validate(cfg_rollout: ml_collections.ConfigDict) -> None:
  """Checks the sampler's keys of config.rollout."""
  for key in ("prompts_per_step", "group_size", "max_prompt_len", "max_new_tokens"):
    check(isinstance(cfg_rollout[key], int) and cfg_rollout[key] >= 1, f"rollout.{key}",
          f"must be an integer >= 1, got {cfg_rollout[key]!r}")
  check(cfg_rollout.temperature >= 0, "rollout.temperature", f"must be >= 0 (0: greedy), got "
        f"{cfg_rollout.temperature}")
  check(0 < cfg_rollout.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {cfg_rollout.top_p}")
  check(isinstance(cfg_rollout.top_k, int) and cfg_rollout.top_k >= 0, "rollout.top_k",
        f"must be an integer >= 0 (0: off), got {cfg_rollout.top_k!r}")
  check(cfg_rollout.behaviour_logprobs in ("raw", "sampled"), "rollout.behaviour_logprobs",
        f"must be raw or sampled, got {cfg_rollout.behaviour_logprobs!r}")
  check(isinstance(cfg_rollout.micro_batches, int) and cfg_rollout.micro_batches >= 1, "rollout.micro_batches",
        f"must be an integer >= 1, got {cfg_rollout.micro_batches!r}")
  check(isinstance(cfg_rollout.decode_segments, int) and cfg_rollout.decode_segments >= 1,
        "rollout.decode_segments", f"must be an integer >= 1, got {cfg_rollout.decode_segments!r}")
  stops = cfg_rollout.stop_sequences
  check(all(isinstance(s, (list, tuple)) and s and all(isinstance(t, int) for t in s) for s in stops),
        "rollout.stop_sequences", f"must be a list of non-empty token-id lists, got {stops!r}")


def rollout_mesh(cfg_rollout: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
                 ) -> Mesh | None:
  """The sampler's own mesh for rollout.devices = "start:stop" (a range of jax.devices()), or None ("")."""
  spec = cfg_rollout.devices
  if not spec:
    return None
  devices = list(jax.devices() if devices is None else devices)
  try:
    start, stop = (int(x) for x in spec.split(":"))
  except ValueError:
    raise ConfigError(f"config.rollout.devices: expected 'start:stop', got {spec!r}") from None
  chosen = devices[start:stop]
  check(0 <= start < stop <= len(devices), "rollout.devices",
        f"{spec!r} is not a non-empty range of the {len(devices)} devices")
  rows = cfg_rollout.prompts_per_step * cfg_rollout.group_size
  check(rows % len(chosen) == 0, "rollout.devices",
        f"{len(chosen)} devices do not divide the {rows} rows (prompts_per_step * group_size)")
  return data_mesh(chosen)


def prompt_bucket(length: int, max_prompt_len: int) -> int:
  """The padded prompt length a batch whose longest prompt has `length` tokens compiles for."""
  bucket = MIN_PROMPT_BUCKET
  while bucket < length:
    bucket *= 2
  return min(bucket, max_prompt_len)


def cache_lengths(prompt_len: int, max_new_tokens: int, segments: int) -> list[int]:
  """The KV cache length of each decode segment (distinct, increasing; the last holds prompt_len +
  max_new_tokens): segment j holds the first ceil(max_new_tokens * (j + 1) / segments) new tokens, rounded up
  to whole key chunks."""
  lengths = []
  for j in range(1, segments + 1):
    length = kvc.chunked_slots(prompt_len + -(-max_new_tokens * j // segments))
    if not lengths or length > lengths[-1]:
      lengths.append(length)
  return lengths


def decode_segments(prompt_len: int, max_new_tokens: int, segments: int) -> list[tuple[int, int]]:
  """(cache slots, end) of each decode segment: its loop runs the steps before `end` not run yet (step 0 is
  the prefill's), with a cache of that many slots. Step i writes its input token's key at slot
  prompt_len + i - 1, so a cache of `slots` serves steps up to slots - prompt_len."""
  return [(slots, min(max_new_tokens, slots - prompt_len + 1))
          for slots in cache_lengths(prompt_len, max_new_tokens, segments)]


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """Everything static about one compiled generate."""
  max_new_tokens: int
  temperature: float
  top_k: int
  top_p: float
  stop_sequences: tuple[tuple[int, ...], ...]
  pad_id: int
  logprobs: str  # "": not recorded; else rollout.behaviour_logprobs (raw | sampled)
  segments: int


def decode_spec(cfg_rollout: ml_collections.ConfigDict, pad_id: int) -> DecodeSpec:
  return DecodeSpec(
      max_new_tokens=cfg_rollout.max_new_tokens, temperature=float(cfg_rollout.temperature),
      top_k=cfg_rollout.top_k, top_p=float(cfg_rollout.top_p),
      stop_sequences=tuple(tuple(s) for s in cfg_rollout.stop_sequences), pad_id=int(pad_id),
      logprobs=cfg_rollout.behaviour_logprobs if cfg_rollout.record_behaviour_logprobs else "",
      segments=cfg_rollout.decode_segments)


def pad_prompts(prompts: Sequence[Sequence[int]], max_prompt_len: int, pad_id: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded prompts [P, L] and their mask, L = the bucket of the longest (`prompt_bucket`)."""
  lengths = [len(p) for p in prompts]
  if not prompts or min(lengths) < 1 or max(lengths) > max_prompt_len:
    raise ValueError(f"prompts must hold 1 to rollout.max_prompt_len={max_prompt_len} tokens; "
                     f"got lengths {min(lengths, default=0)}..{max(lengths, default=0)} over {len(prompts)}")
  bucket = prompt_bucket(max(lengths), max_prompt_len)
  prompt_PxL = np.full((len(prompts), bucket), pad_id, np.int32)
  for row, p in enumerate(prompts):
    prompt_PxL[row, bucket - len(p):] = p
  mask_PxL = (np.arange(bucket)[None, :] >= bucket - np.asarray(lengths)[:, None]).astype(np.int32)
  return prompt_PxL, mask_PxL


def program_bytes(lowered: jax.stages.Lowered) -> int:
  """A lowered program's compiled memory: arguments + outputs + temporaries, less the donated (aliased)."""
  m = lowered.compile().memory_analysis()
  return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def speed_stats(mask_BxN: np.ndarray, slot_steps: int, seconds: float) -> dict[str, float]:
  """Useful generated tokens/s and slot occupancy: the decode steps' live slot-steps (every token but each
  row's first, which the prefill gives) over all the slot-steps they ran (rows or slots, times steps)."""
  lengths_B = mask_BxN.sum(1)
  live = float(np.maximum(lengths_B - 1, 0).sum())
  return {"throughput/generate_tokens_per_s": float(lengths_B.sum()) / seconds,
          "rollout/slot_occupancy": live / max(slot_steps, 1)}


class Samples(NamedTuple):
  """Host arrays; B = P * G rows, group-contiguous; N = max_new_tokens."""
  tokens_BxN: np.ndarray  # int32, pad_id after the end
  mask_BxN: np.ndarray  # int32, 1 on generated tokens including the EOS / last stop token
  finish_B: np.ndarray  # int32 index into sampling.FINISH_REASONS
  logprobs_BxN: np.ndarray | None  # float32 behaviour log-probs (0 on padding), when recorded
  forward_passes: int  # of the model on the batch: the prefill and the decode steps (0: nothing was sampled)
  stats: dict[str, float] | None = None  # speed metrics of this call (docs/design.md §5)


def logits_of(model: Decoder, hidden_BxD: jax.Array) -> jax.Array:
  return jnp.dot(hidden_BxD, model.unembedding(), preferred_element_type=jnp.float32)


def split_layers(state: nnx.State) -> Any:
  """`state` with every stacked layer parameter [L, ...] as a list of its L slices (see `restack`)."""
  def split(path, x):
    return [x[i] for i in range(x.shape[0])] if "layers" in jax.tree_util.keystr(path) else x

  return jax.tree_util.tree_map_with_path(split, state)


def restack(split_state: Any) -> Any:
  """Inverse of `split_layers`, called inside the decode loop on slices taken before it.

  The model slices layer i out of every stacked parameter; inside a loop XLA on CPU materialises such slices,
  a copy of all the weights per token. Taking the slices once before the loop and stacking them inside it
  lets XLA's simplifier resolve slice(stack(w_0, ..., w_L-1), i) to w_i, so decoding reads the weights in place.
  """
  return jax.tree.map(jnp.stack, split_state, is_leaf=lambda x: isinstance(x, list))


@functools.partial(jax.jit, static_argnames=("graphdef", "spec"))
def generate_arrays(graphdef: nnx.GraphDef, state: nnx.State, prompt_PxL: jax.Array, prompt_mask_PxL: jax.Array,
                    keys_B: jax.Array, eos_E: jax.Array, prompt_rope: tuple[jax.Array, jax.Array],
                    spec: DecodeSpec) -> dict[str, jax.Array]:
  """Samples spec.max_new_tokens tokens after left-padded prompts (every row's last column is real).

  `prompt_rope` is `rope_inputs` of the prompt mask (see model.Decoder.__call__).

  Row b continues prompt b // G, where G = B / P: the P prompts are prefilled once and their cache and
  first-token logits are repeated for the G rows of each group.
  """
  # One compute-dtype copy of the weights per call, outside the decode loop: cast inside it, every token would
  # convert them all again. A no-op when the published copy is already in the compute dtype (make_transfer).
  state = cast_params(state, nnx.merge(graphdef, state).cfg.dtype)
  model = nnx.merge(graphdef, state)
  prompts, prompt_len = prompt_PxL.shape
  batch = keys_B.shape[0]
  if batch % prompts:
    raise ValueError(f"{batch} row keys do not make whole groups of {prompts} prompts")
  group = batch // prompts
  n = spec.max_new_tokens
  positions_PxL = positions_of(prompt_mask_PxL)
  hidden, cache = model(prompt_PxL, positions_PxL, prompt_mask_PxL, kvc.init_cache(model.cfg, prompts, prompt_len),
                        rope=prompt_rope)
  cache = kvc.repeat_rows(cache, group)
  window = max([len(s) for s in spec.stop_sequences], default=1)
  uniforms_BxN = sampling.row_uniforms(keys_B, n)

  def emit(i, logits_BxV, carry):
    """Chooses token i of every unfinished row and records why rows finish."""
    tokens, logprobs, length, finish, recent = carry
    done = length <= i  # finished before step i
    token, logprob = sampling.choose_scored(logits_BxV, uniforms_BxN[:, i], spec.temperature, spec.top_k,
                                            spec.top_p, spec.logprobs)
    token = jnp.where(done, spec.pad_id, token)
    tokens = tokens.at[:, i].set(token)
    if spec.logprobs:
      logprobs = logprobs.at[:, i].set(jnp.where(done, 0.0, logprob))
    recent = jnp.concatenate([recent[:, 1:], token[:, None]], axis=1)
    is_eos = ~done & jnp.isin(token, eos_E)
    is_stop = ~done & ~is_eos & sampling.stop_sequence_hit(recent, spec.stop_sequences)
    finish = jnp.where(is_eos, 1, jnp.where(is_stop, 2, finish))
    length = jnp.where(done | is_eos | is_stop, length, i + 2)
    return tokens, logprobs, length, finish, recent

  # length_B: a row finished at step j holds j + 1, its response length; a live row holds i + 1 before step i.
  carry = (jnp.full((batch, n), spec.pad_id, jnp.int32), jnp.zeros((batch, n), jnp.float32),
           jnp.full((batch,), 1, jnp.int32), jnp.zeros((batch,), jnp.int32),
           jnp.full((batch, window), -1, jnp.int32))
  first_logits_BxV = constrain(jnp.repeat(logits_of(model, hidden[:, -1]), group, axis=0), ("act_batch", "act_vocab"))
  carry = emit(0, first_logits_BxV, carry)
  # The RoPE of every decode step at once (see Decoder.__call__): step i's token sits at last position + i.
  last_position_B = constrain(jnp.repeat(positions_PxL[:, -1], group), ("act_batch",))
  cos_BxN, sin_BxN = model.rope(last_position_B[:, None] + jnp.arange(n))
  split_state = split_layers(state)

  # With no EOS id and no stop sequence no row can end early: skip the check and its all-reduce.
  can_stop = eos_E.shape[0] > 0 or bool(spec.stop_sequences)

  def cond(end, loop):
    i, _, carry = loop
    return (i < end) & jnp.any(carry[2] > i) if can_stop else i < end

  def steps(end, loop):
    """Up to EXIT_CHECK_STEPS decode steps, with no check on the rows in between."""
    return jax.lax.fori_loop(0, jnp.minimum(EXIT_CHECK_STEPS, end - loop[0]), lambda _, inner: body(inner), loop)

  def body(loop):
    i, cache, carry = loop
    tokens_Bx1 = jax.lax.dynamic_slice_in_dim(carry[0], i - 1, 1, axis=1)
    positions_Bx1 = (last_position_B + i)[:, None]
    rope = tuple(jax.lax.dynamic_slice_in_dim(x, i, 1, axis=1) for x in (cos_BxN, sin_BxN))
    decoder = nnx.merge(graphdef, restack(split_state))
    hidden, cache = decoder(tokens_Bx1, positions_Bx1, jnp.ones_like(tokens_Bx1), cache, rope=rope)
    return i + 1, cache, emit(i, logits_of(decoder, hidden[:, 0]), carry)

  loop = (jnp.int32(1), cache, carry)
  for slots, end in decode_segments(prompt_len, n, spec.segments):
    i, cache, carry = loop
    loop = jax.lax.while_loop(functools.partial(cond, end), functools.partial(steps, end),
                              (i, kvc.grow(cache, slots), carry))
  i, _, (tokens, logprobs, length, finish, _) = loop
  length = jnp.minimum(length, n)
  mask = (jnp.arange(n)[None, :] < length[:, None]).astype(jnp.int32)
  return {"tokens": tokens, "mask": mask, "finish": finish, "logprobs": logprobs, "forward_passes": i}


class Sampler:
  """Host-side front of `generate_arrays`: pads and buckets prompts, builds the G row keys of each.

  `state` arguments are the model's `nnx.State` (as `nnx.split(model)` gives it), on the sampler's devices.
  """

  def __init__(self, model: Decoder, cfg_rollout: ml_collections.ConfigDict, eos_ids: Sequence[int],
               pad_id: int, mesh: Mesh | None = None) -> None:
    validate(cfg_rollout)
    self.graphdef = nnx.graphdef(model)
    self.cfg = cfg_rollout
    self.mesh = mesh
    self.spec = decode_spec(cfg_rollout, pad_id)
    self.eos_ids_E = np.asarray(eos_ids, np.int32)
    shards = row_shards(mesh)
    rows = self.micro_prompts(cfg_rollout.prompts_per_step) * cfg_rollout.group_size
    if rows % shards:  # correct, but each shard then does all the work: say so rather than run slowly unseen
      logging.warning("sampler: %d rows do not split over the mesh's %d data x fsdp shards (rows per generate "
                      "call: rollout.micro_batches); every shard samples all of them", rows, shards)

  def generate(self, state: nnx.State, prompts: Sequence[Sequence[int]], *, seed: int, step: int,
               prompt_ids: Sequence[int] | None = None) -> Samples:
    """G samples of each prompt (token ids, without padding); rows are group-contiguous.

    `prompt_ids` (default 0..P-1) name the prompts in the random keys; give global ids when each process
    samples its own slice of the step's prompts. The prompts go through in rollout.micro_batches calls of
    the compiled program, each of `micro_prompts(P)` prompts; a row's keys, and so its samples, do not depend
    on which call it is in.
    """
    start = time.perf_counter()
    pad_prompts(prompts, self.cfg.max_prompt_len, self.spec.pad_id)  # checks the lengths before any call
    ids = np.arange(len(prompts)) if prompt_ids is None else np.asarray(prompt_ids)
    size = self.micro_prompts(len(prompts))
    parts = [self._generate(state, prompts[i:i + size], ids[i:i + size], seed, step)
             for i in range(0, len(prompts), size)]
    logprobs = [p.logprobs_BxN for p in parts]
    out = Samples(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("tokens_BxN", "mask_BxN", "finish_B")),
                  None if logprobs[0] is None else np.concatenate(logprobs), sum(p.forward_passes for p in parts))
    # Each call runs forward_passes - 1 decode steps over all its rows.
    slot_steps = sum((p.forward_passes - 1) * len(p.mask_BxN) for p in parts)
    return out._replace(stats=speed_stats(out.mask_BxN, slot_steps, time.perf_counter() - start))

  def micro_prompts(self, prompts: int) -> int:
    """The prompts of one call of the compiled program, of `prompts` in all."""
    return -(-prompts // self.cfg.micro_batches)

  def _generate(self, state: nnx.State, prompts: Sequence[Sequence[int]], ids: np.ndarray, seed: int,
                step: int) -> Samples:
    prompt_PxL, mask_PxL = pad_prompts(prompts, self.cfg.max_prompt_len, self.spec.pad_id)
    arrays = (prompt_PxL, mask_PxL, sampling.row_keys(seed, step, ids, self.cfg.group_size))
    if self.mesh is not None:
      arrays = tuple(jax.device_put(x, self._row_sharding(x)) for x in arrays)
    with self._mesh_context():
      rope = rope_inputs(self.graphdef, arrays[1], state)
      out = generate_arrays(self.graphdef, state, *arrays, self._eos_on_devices, rope, spec=self.spec)
    out = jax.device_get(out)
    return Samples(out["tokens"], out["mask"], out["finish"],
                   out["logprobs"] if self.spec.logprobs else None, int(out["forward_passes"]))

  def lower(self, state: nnx.State) -> jax.stages.Lowered:
    """The generate program of the longest prompt bucket, lowered for abstract `state` (jax.ShapeDtypeStruct
    leaves on the sampler's mesh) without running anything: the plan compiles it so."""
    prompts = self.micro_prompts(self.cfg.prompts_per_step)
    bucket = prompt_bucket(self.cfg.max_prompt_len, self.cfg.max_prompt_len)
    keys = jax.eval_shape(sampling.row_keys, 0, 0, np.arange(prompts), self.cfg.group_size)
    arrays = (jax.ShapeDtypeStruct((prompts, bucket), jnp.int32), jax.ShapeDtypeStruct((prompts, bucket), jnp.int32),
              keys)
    replicated = None
    if self.mesh is not None:
      arrays = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._row_sharding(x)) for x in arrays)
      replicated = NamedSharding(self.mesh, PartitionSpec())
    eos = jax.ShapeDtypeStruct(self.eos_ids_E.shape, jnp.int32, sharding=replicated)
    with self._mesh_context():
      rope = jax.eval_shape(functools.partial(rope_inputs, self.graphdef), arrays[1], state)
      return generate_arrays.lower(self.graphdef, state, *arrays, eos, rope, spec=self.spec)

  def _row_sharding(self, x: Any) -> NamedSharding:
    """Rows split over data x fsdp; the P prompts too when they divide evenly, else every shard prefills all."""
    return logical_sharding(("act_batch",) + (None,) * (len(x.shape) - 1), x.shape, self.mesh)

  def _mesh_context(self) -> Any:
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  @functools.cached_property
  def _eos_on_devices(self) -> Any:
    """The EOS ids, placed once on the mesh at the first generate (every call reads them)."""
    if self.mesh is None:
      return self.eos_ids_E
    return jax.device_put(self.eos_ids_E, NamedSharding(self.mesh, PartitionSpec()))
