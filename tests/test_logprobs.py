"""Chunked token log-probs equal the direct ones, and both equal an explicit softmax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asympo_jax.model.logprobs import token_logprobs

B, T, D, V = 3, 13, 8, 37


def case(seed=0):
  k = jax.random.split(jax.random.key(seed), 3)
  hidden = jax.random.normal(k[0], (B, T, D))
  unembed = jax.random.normal(k[1], (D, V)) * 0.5
  tokens = jax.random.randint(k[2], (B, T), 0, V)
  return hidden, unembed, tokens


def test_direct_matches_numpy_softmax():
  hidden, unembed, tokens = case()
  lp, ent = token_logprobs(hidden, unembed, tokens)
  logits = np.asarray(hidden, np.float64) @ np.asarray(unembed, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  tok = np.asarray(tokens)
  expected = np.zeros((B, T))
  for b in range(B):
    for t in range(1, T):
      expected[b, t] = logp[b, t - 1, tok[b, t]]
  np.testing.assert_allclose(lp, expected, rtol=1e-5, atol=1e-5)
  expected_ent = -(np.exp(logp) * logp).sum(-1)[:, :-1]
  np.testing.assert_allclose(ent[:, 1:], expected_ent, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(lp[:, 0]) == 0)


@pytest.mark.parametrize("chunk", [1, 4, 5, 12])
def test_chunked_equals_direct_with_gradients(chunk):
  hidden, unembed, tokens = case(1)
  w = jax.random.normal(jax.random.key(7), (B, T))

  def loss(h, u, c):
    lp, ent = token_logprobs(h, u, tokens, chunk=c)
    return (w * lp).sum() + 0.3 * (w * ent).sum()

  direct = jax.value_and_grad(loss, argnums=(0, 1))(hidden, unembed, 0)
  chunked = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)(hidden, unembed, chunk)
  np.testing.assert_allclose(chunked[0], direct[0], rtol=1e-5)
  for a, b in zip(chunked[1], direct[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_inputs_are_scored_in_float32():
  hidden, unembed, tokens = case(2)
  lp, _ = token_logprobs(hidden.astype(jnp.bfloat16), unembed.astype(jnp.bfloat16), tokens, chunk=4)
  assert lp.dtype == jnp.float32
  ref, _ = token_logprobs(hidden.astype(jnp.bfloat16).astype(jnp.float32),
                          unembed.astype(jnp.bfloat16).astype(jnp.float32), tokens)
  np.testing.assert_allclose(lp, ref, rtol=1e-5, atol=1e-5)


def test_chunked_peak_memory_is_smaller():
  """XLA's own buffer assignment: the chunked backward never holds a [B, T, V] float32 block."""
  b, t, d, v, chunk = 2, 513, 16, 16384, 32
  args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((b, t), jnp.int32))

  def temp_bytes(chunk):
    f = jax.grad(lambda h, u, tok: token_logprobs(h, u, tok, chunk)[0].sum(), argnums=(0, 1))
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes

  full_block, chunk_block = b * (t - 1) * v * 4, b * chunk * v * 4
  assert temp_bytes(0) >= full_block
  # A few chunk-sized blocks (logits, softmax, their cotangents), independent of T: here 16 chunks.
  assert temp_bytes(chunk) <= 6 * chunk_block < full_block / 2


def test_gradients_match_an_explicit_log_softmax():
  hidden, unembed, tokens = case(3)
  w = jax.random.normal(jax.random.key(8), (B, T))

  def reference(h, u):  # the textbook form, independent of the implementation's logsumexp / dot tricks
    logp = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", h[:, :-1], u), axis=-1)
    lp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    ent = -(jnp.exp(logp) * logp).sum(-1)
    return (w[:, 1:] * lp).sum() + 0.3 * (w[:, 1:] * ent).sum()

  def ours(h, u):
    lp, ent = token_logprobs(h, u, tokens)
    return (w * lp).sum() + 0.3 * (w * ent).sum()

  want = jax.value_and_grad(reference, argnums=(0, 1))(hidden, unembed)
  got = jax.value_and_grad(ours, argnums=(0, 1))(hidden, unembed)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, b in zip(got[1], want[1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_start_scores_only_the_later_columns_with_the_same_values_and_gradients():
  hidden, unembed, tokens = case(2)
  w = jax.random.normal(jax.random.key(8), (B, T))
  start = 5

  def weighted(h, u, s):
    lp, ent = token_logprobs(h, u, tokens, start=s)
    return jnp.sum(w[:, start:] * (lp + 0.3 * ent)[:, start:]), (lp, ent)

  (val, (lp, ent)), grads = jax.value_and_grad(weighted, argnums=(0, 1), has_aux=True)(hidden, unembed, start)
  (want, (lp_all, ent_all)), want_grads = jax.value_and_grad(weighted, argnums=(0, 1), has_aux=True)(
      hidden, unembed, 1)
  np.testing.assert_allclose(lp[:, start:], lp_all[:, start:], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ent[:, start:], ent_all[:, start:], rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(lp[:, :start]) == 0) and np.all(np.asarray(ent[:, :start]) == 0)
  np.testing.assert_allclose(val, want, rtol=1e-6)
  for g, g_all in zip(grads, want_grads):
    np.testing.assert_allclose(g, g_all, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="start"):
    token_logprobs(hidden, unembed, tokens, start=T)
