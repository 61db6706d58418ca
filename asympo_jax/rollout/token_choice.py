"""Token choice for the sampler, as pure functions of logits: filtering, drawing, stopping, per-row keys.

Drawing uses the inverse CDF with one uniform number per row, not Gumbel-max: Gumbel-max needs B x V random
numbers per token, and on CPU threefry over a 64 x 32000 batch costs about 2.5x the LM head's matmul, while the
inverse CDF costs one exp pass. The CDF is summed in two levels (blocks of `_BLOCK` tokens, then inside the
chosen block) with triangular matmuls, because XLA's cumsum over a long axis is slow on CPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_BLOCK = 256
FINISH_REASONS = ("length", "eos", "stop")  # index = the finish code the sampler returns


@functools.partial(jax.jit, static_argnames="group_size")  # eager, its dozen small ops took about 2 ms a call
def row_keys(seed: int, step: int, prompt_ids_P: jax.Array, group_size: int) -> jax.Array:
  """Key of row p*G + g from (seed, step, prompt id, sample index) only, so a response never depends on the
  rest of the batch. Returns [P*G] threefry keys (raw uint32 [P*G, 2])."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), step)

  def one(prompt_id, g):
    return jax.random.fold_in(jax.random.fold_in(base, prompt_id), g)

  ids = jnp.repeat(jnp.asarray(prompt_ids_P, jnp.int32), group_size)
  g = jnp.tile(jnp.arange(group_size, dtype=jnp.int32), len(prompt_ids_P))
  return jax.vmap(one)(ids, g)


def first_argmax(x_BxV: jax.Array) -> jax.Array:
  """argmax over the last axis, the first index on ties; XLA's variadic-reduce argmax is 5x slower on CPU."""
  top = x_BxV.max(-1, keepdims=True)
  vocab = x_BxV.shape[-1]
  return jnp.min(jnp.where(x_BxV == top, jnp.arange(vocab), vocab), -1).astype(jnp.int32)


def filter_logits(logits_BxV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets to -inf every token outside the top-k (0: off) and then outside the nucleus (1.0: off).

  A token stays when fewer than k tokens, resp. less than top_p probability mass, are strictly more likely than
  it; ties with the last kept token stay too. The most likely token always stays.
  """
  if top_k > 0 and top_k < logits_BxV.shape[-1]:
    kth = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # the smallest kept logit: the last sorted one whose preceding mass is below top_p
    threshold = jnp.min(jnp.where(mass_before < top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold, -jnp.inf, logits_BxV)
  return logits_BxV


def _cumsum(x_BxN: jax.Array) -> jax.Array:
  n = x_BxN.shape[-1]
  return jnp.dot(x_BxN, jnp.triu(jnp.ones((n, n), x_BxN.dtype)), precision=jax.lax.Precision.HIGHEST)


def draw(logits_BxV: jax.Array, uniform_B: jax.Array) -> jax.Array:
  """Samples token ~ softmax(logits) by inverting the CDF at uniform_B in [0, 1). -inf logits are never drawn.

  Returns int32 [B].
  """
  batch, vocab = logits_BxV.shape
  nblocks = -(-vocab // _BLOCK)
  logits = jnp.pad(logits_BxV.astype(jnp.float32), ((0, 0), (0, nblocks * _BLOCK - vocab)),
                   constant_values=-jnp.inf)
  p_BxNxK = jnp.exp(logits - logits.max(-1, keepdims=True)).reshape(batch, nblocks, _BLOCK)
  cdf_BxN = _cumsum(p_BxNxK.sum(-1))
  target_B1 = uniform_B[:, None] * cdf_BxN[:, -1:]
  block_B = jnp.minimum(jnp.sum(cdf_BxN <= target_B1, -1), nblocks - 1)
  before_B1 = jnp.where(block_B[:, None] > 0,
                        jnp.take_along_axis(cdf_BxN, jnp.maximum(block_B - 1, 0)[:, None], 1), 0.0)
  inner_BxK = jnp.take_along_axis(p_BxNxK, block_B[:, None, None], 1)[:, 0]
  inner_cdf = _cumsum(inner_BxK) + before_B1
  token_B = block_B * _BLOCK + jnp.minimum(jnp.sum(inner_cdf <= target_B1, -1), _BLOCK - 1)
  # Rounding can put the draw on a zero-probability token at a block edge; fall back to the mode there.
  drawn_p = jnp.take_along_axis(p_BxNxK.reshape(batch, -1), token_B[:, None], 1)[:, 0]
  return jnp.where(drawn_p > 0, token_B, first_argmax(logits)).astype(jnp.int32)


def sampling_logits(logits_BxV: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """The logits of the distribution a token is drawn from at temperature > 0: tempered, then filtered (-inf
  outside the top-k and the nucleus); their softmax is that distribution, renormalised over what stays."""
  return filter_logits(logits_BxV.astype(jnp.float32) / temperature, top_k, top_p)


def choose_scored(logits_BxV: jax.Array, uniform_B: jax.Array, temperature: float, top_k: int, top_p: float,
                  logprob: str = "") -> tuple[jax.Array, jax.Array | None]:
  """`choose`'s tokens int32 [B], and their log-probs float32 [B] (None for logprob=""): "raw", the model's
  untempered, unfiltered ones (`token_logprob`); "sampled", those of the distribution the token was drawn from
  (`sampling_logits`), 0 under greedy choice, where the chosen token has probability 1."""
  if temperature == 0.0:
    token_B, sampled_BxV = first_argmax(logits_BxV), None
  else:
    sampled_BxV = sampling_logits(logits_BxV, temperature, top_k, top_p)
    token_B = draw(sampled_BxV, uniform_B)
  if logprob == "raw":
    return token_B, token_logprob(logits_BxV, token_B)
  if logprob == "sampled":
    return token_B, (jnp.zeros(token_B.shape, jnp.float32) if sampled_BxV is None
                     else token_logprob(sampled_BxV, token_B))
  return token_B, None


def choose(logits_BxV: jax.Array, uniform_B: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """The next token of each row: greedy when temperature == 0, else a draw from the filtered, tempered
  distribution at the row's uniform number in [0, 1). Returns int32 [B]."""
  return choose_scored(logits_BxV, uniform_B, temperature, top_k, top_p)[0]


def row_uniforms(keys_B: jax.Array, length: int) -> jax.Array:
  """[B, length] uniform numbers, one per row and token index, from each row's key: drawn once before the
  decode loop instead of hashing keys at every step."""
  return jax.vmap(lambda key: jax.random.uniform(key, (length,)))(keys_B)


def token_logprob(logits_BxV: jax.Array, token_B: jax.Array) -> jax.Array:
  """log softmax(logits)[token] in float32; of the model's logits, the untempered, unfiltered model log-prob."""
  logits = logits_BxV.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, token_B[:, None], 1)[:, 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def stop_sequence_hit(window_BxL: jax.Array, stop_sequences: tuple[tuple[int, ...], ...]) -> jax.Array:
  """Whether the last generated tokens (window_BxL, newest last, -1 before the response) end with any stop
  sequence. Returns bool [B]."""
  hit = jnp.zeros(window_BxL.shape[:1], bool)
  for seq in stop_sequences:
    tail = window_BxL[:, window_BxL.shape[1] - len(seq):]
    hit |= jnp.all(tail == jnp.asarray(seq, jnp.int32), axis=-1)
  return hit
