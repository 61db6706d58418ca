"""Token-choice math: the draw follows softmax, filters keep exactly their allowed sets, keys are per row."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from scipy import stats

from asympo_jax.rollout import token_choice as sampling

logit_values = st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0, -np.inf])


def allowed(logits, top_k, top_p):
  """Tokens a top-k / top-p sampler may emit, from numpy: fewer than k tokens strictly more likely than the
  token, and, of the distribution renormalised over those top-k tokens (transformers' order: top-k, then
  top-p), less than top_p of the mass."""
  ok = np.isfinite(logits)
  if top_k:
    ok &= np.array([(logits > x).sum() < top_k for x in logits])
  p = np.where(ok, np.exp(logits - logits.max()), 0.0)
  p /= p.sum()
  if top_p < 1.0:
    ok &= np.array([p[p > q].sum() < top_p - 1e-6 for q in p]) | (p == p.max())
  return ok


@pytest.mark.parametrize("vocab", [7, 300])  # 300: two CDF blocks
def test_draw_follows_softmax(vocab):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=vocab).astype(np.float32) * 1.5
  if vocab > 7:
    logits[:-10] = -np.inf  # the mass sits in the second block
  n = 40_000
  uniforms = rng.uniform(size=n).astype(np.float32)
  tokens = np.asarray(jax.jit(sampling.draw)(jnp.broadcast_to(logits, (n, vocab)), uniforms))
  p = np.exp(logits.astype(np.float64) - logits.max())
  support = p > 0
  assert support[tokens].all()
  counts = np.bincount(tokens, minlength=vocab)[support]
  assert stats.chisquare(counts, p[support] / p.sum() * n).pvalue > 1e-3


@settings(max_examples=60, deadline=None)
@given(logits=st.lists(logit_values, min_size=2, max_size=12).filter(lambda v: max(v) > -np.inf),
       top_k=st.integers(0, 5), top_p=st.sampled_from([1.0, 0.95, 0.5, 0.1]),
       temperature=st.sampled_from([0.5, 1.0, 2.0]), seed=st.integers(0, 1000))
def test_filtered_choice_stays_in_allowed_set(logits, top_k, top_p, temperature, seed):
  logits = np.asarray(logits, np.float32)
  rows = 64
  uniforms = jax.random.uniform(jax.random.PRNGKey(seed), (rows,))
  tokens = np.asarray(sampling.choose(jnp.broadcast_to(logits, (rows, len(logits))), uniforms, temperature, top_k,
                                      top_p))
  ok = allowed(logits / temperature, top_k, top_p)
  assert ok[tokens].all(), (tokens, ok)


def test_top_k_and_top_p_reach_their_whole_set():
  logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
  uniforms = jax.random.uniform(jax.random.PRNGKey(0), (2000,))
  for top_k, top_p, want in [(2, 1.0, {0, 1}), (0, 0.65, {0, 1}), (0, 0.75, {0, 1, 2}), (3, 0.35, {0})]:
    tokens = sampling.choose(jnp.broadcast_to(logits, (2000, 4)), uniforms, 1.0, top_k, top_p)
    assert set(np.asarray(tokens).tolist()) == want


def test_greedy_and_first_argmax():
  x = np.array([[1.0, 3.0, 3.0, 0.0], [5.0, -1.0, 5.0, 5.0]], np.float32)
  np.testing.assert_array_equal(sampling.choose(x, None, 0.0, 0, 1.0), [1, 0])


def test_token_logprob_is_log_softmax():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 9)).astype(np.float32)
  tokens = np.array([0, 4, 8])
  want = logits[np.arange(3), tokens] - np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(sampling.token_logprob(logits, tokens), want, atol=1e-6)


def test_row_keys_do_not_depend_on_the_rest_of_the_batch():
  big = np.asarray(sampling.row_keys(3, 7, np.array([4, 9, 2]), 2))
  alone = np.asarray(sampling.row_keys(3, 7, np.array([9]), 2))
  np.testing.assert_array_equal(big[2:4], alone)
  assert len({tuple(k) for k in big}) == 6
  other_step = np.asarray(sampling.row_keys(3, 8, np.array([9]), 2))
  assert not np.array_equal(other_step, alone)


@settings(deadline=None)
@given(window=st.lists(st.integers(-1, 3), min_size=4, max_size=4))
def test_stop_sequence_hit(window):
  seqs = ((1, 2), (3,), (0, 0, 0))
  want = any(tuple(window[len(window) - len(s):]) == s for s in seqs)
  assert bool(sampling.stop_sequence_hit(jnp.asarray([window], jnp.int32), seqs)[0]) == want


@settings(max_examples=60, deadline=None)
@given(logits=st.lists(logit_values, min_size=2, max_size=12).filter(lambda v: max(v) > -np.inf),
       top_k=st.integers(0, 5), top_p=st.sampled_from([1.0, 0.95, 0.5, 0.1]),
       temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]), seed=st.integers(0, 1000))
# top-k and top-p together: unrenormalised, token 1 would be in the nucleus (0.48 of the mass before it);
# renormalised over the top 2, it is not (0.56).
@example(logits=[-3.0, -1.0, -0.5], top_k=2, top_p=0.5, temperature=2.0, seed=0)
def test_scored_choice_gives_the_raw_and_the_sampled_logprob(logits, top_k, top_p, temperature, seed):
  logits = np.asarray(logits, np.float32)
  rows = 16
  x = jnp.broadcast_to(logits, (rows, len(logits)))
  uniforms = jax.random.uniform(jax.random.PRNGKey(seed), (rows,))
  tokens, raw = sampling.choose_scored(x, uniforms, temperature, top_k, top_p, "raw")
  tokens2, processed = sampling.choose_scored(x, uniforms, temperature, top_k, top_p, "sampled")
  np.testing.assert_array_equal(tokens, tokens2)
  np.testing.assert_array_equal(tokens, sampling.choose(x, uniforms, temperature, top_k, top_p))
  assert sampling.choose_scored(x, uniforms, temperature, top_k, top_p)[1] is None
  tokens = np.asarray(tokens)
  finite = logits[np.isfinite(logits)].astype(np.float64)
  model_logprob = logits.astype(np.float64) - finite.max() - np.log(np.exp(finite - finite.max()).sum())
  np.testing.assert_allclose(raw, model_logprob[tokens], atol=1e-5)
  if temperature == 0.0:  # greedy: the chosen token had probability 1
    np.testing.assert_array_equal(processed, 0.0)
    return
  ok = allowed(logits / temperature, top_k, top_p)
  p = np.where(ok, np.exp((logits.astype(np.float64) - finite.max()) / temperature), 0.0)
  np.testing.assert_allclose(processed, np.log(p[tokens] / p.sum()), atol=1e-5)
