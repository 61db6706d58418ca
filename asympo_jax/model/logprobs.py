"""Token log-probs and entropies of a sequence from final hidden states and the unembedding matrix.

logprobs_BxT[:, t] = log p(tokens[:, t] | tokens[:, <t]), scored from hidden_BxTxD[:, t - 1]; column 0
(no context) is 0, and so is every column before `start` when one is given. Everything is computed in
float32, whatever the parameter and compute dtypes.

The direct version materialises the [B, T, V] float32 logits (and their gradient), 2.3 GiB each for B=8,
T=512 on a 152k vocabulary. The chunked version maps over time chunks and rematerialises each
chunk's logits in the backward pass, so peak memory holds one [B, chunk, V] block at a time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _score(hidden_BxTxD: Array, unembed_DxV: Array, targets_BxT: Array) -> tuple[Array, Array]:
  """Log-prob of each target and the entropy of each predictive distribution, [B, T] each.

  Never materialises the [B*T, V] log-softmax: log p(target) = logit(target) - logsumexp(logits), and the
  entropy is logsumexp(logits) - E_p[logit]. The target's logit is its own D-long dot product rather than a
  gather from the logits, whose gradient would scatter into a [B*T, V] buffer of zeros. Peak memory of the
  direct forward + backward falls from four [B, T, V] arrays to about one and a half (benchmarks/logprob_memory).
  """
  B, T, D = hidden_BxTxD.shape
  h_NxD = hidden_BxTxD.astype(jnp.float32).reshape(B * T, D)
  unembed_DxV = unembed_DxV.astype(jnp.float32)
  # A 2-D matmul: the 3-D einsum made XLA:CPU transpose the [B*T, V] logits gradient for the weight gradient.
  logits_NxV = h_NxD @ unembed_DxV
  lse_N = jax.nn.logsumexp(logits_NxV, axis=-1)
  target_logit_N = jnp.sum(h_NxD * jnp.take(unembed_DxV, targets_BxT.reshape(-1), axis=1).T, axis=-1)
  entropy_N = lse_N - jnp.sum(jnp.exp(logits_NxV - lse_N[:, None]) * logits_NxV, axis=-1)
  return (target_logit_N - lse_N).reshape(B, T), entropy_N.reshape(B, T)


def token_logprobs(hidden_BxTxD: Array, unembed_DxV: Array, tokens_BxT: Array, chunk: int = 0,
                   start: int = 1) -> tuple[Array, Array]:
  """(logprobs_BxT, entropy_BxT), shifted so position t scores token t; chunk > 0 chunks over time.

  Only the columns t >= start are scored (the others are 0): a train batch's loss covers its response
  columns only, and the LM head over the prompt columns would be a third of the benchmark train step's LM head.
  """
  B, T, D = hidden_BxTxD.shape
  if not 1 <= start < T:
    raise ValueError(f"start must be in [1, {T}) for {T} tokens, got {start}")
  context_BxSxD, targets_BxS = hidden_BxTxD[:, start - 1:-1], tokens_BxT[:, start:]
  S = T - start
  if chunk <= 0 or chunk >= S:
    lp_BxS, ent_BxS = _score(context_BxSxD, unembed_DxV, targets_BxS)
  else:
    n = -(-S // chunk)
    pad = n * chunk - S
    ctx_NxBxCxD = jnp.pad(context_BxSxD, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk, D).swapaxes(0, 1)
    tgt_NxBxC = jnp.pad(targets_BxS, ((0, 0), (0, pad))).reshape(B, n, chunk).swapaxes(0, 1)
    # checkpoint: the backward pass recomputes each chunk's logits instead of storing all of them.
    scored = jax.lax.map(jax.checkpoint(lambda a: _score(a[0], unembed_DxV, a[1])), (ctx_NxBxCxD, tgt_NxBxC))
    lp_BxS, ent_BxS = (s.swapaxes(0, 1).reshape(B, n * chunk)[:, :S] for s in scored)
  unscored = jnp.zeros((B, start), jnp.float32)
  return jnp.concatenate([unscored, lp_BxS], axis=1), jnp.concatenate([unscored, ent_BxS], axis=1)
