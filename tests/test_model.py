"""Decoder parity with transformers' PyTorch models, the KV cache, and the layer options."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests import tiny_checkpoints as tc
from asympo_jax.model import hf_io
from asympo_jax.model import kv_cache
from asympo_jax.model.decoder import Decoder
from asympo_jax.model.architecture import ModelConfig

VOCAB = tc._COMMON["vocab_size"]


@pytest.fixture(scope="module", params=sorted(tc.CASES))
def checkpoint(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  torch_model = tc.make_checkpoint(request.param, path)
  return path, torch_model


def _batch(padding: str, seed: int = 0, B: int = 4, T: int = 9):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (B, T)).astype(np.int32)
  lengths = np.array([T, T - 3, 2, T - 1][:B])
  pos = np.arange(T)[None]
  mask = (pos < lengths[:, None]) if padding == "right" else (pos >= T - lengths[:, None])
  return tokens, mask.astype(np.int32)


def _logits(model, tokens, mask):
  hidden, _ = model(jnp.asarray(tokens), jnp.asarray(tc.positions_from_mask(mask)), jnp.asarray(mask))
  return np.asarray(model.logits(hidden))


@pytest.mark.parametrize("padding", ["right", "left"])
def test_logits_match_transformers(checkpoint, padding):
  path, torch_model = checkpoint
  tokens, mask = _batch(padding)
  ours = _logits(hf_io.load_model(path), tokens, mask)
  ref = tc.torch_logits(torch_model, tokens, mask)
  assert np.abs(ours - ref)[mask > 0].max() <= 1e-4
  assert np.isfinite(ours).all()


def test_left_padding_gives_the_logits_of_right_padding():
  # Causal attention never sees right padding, so right-padded rows are the unpadded sequences. Masking is
  # shared by every architecture: one random model is enough.
  model = Decoder(ModelConfig.from_hf(tc.hf_config("qwen2_bias_untied")), rngs=nnx.Rngs(1))
  tokens, right_mask = _batch("right", seed=4)
  left_mask = right_mask[:, ::-1].copy()
  left_tokens = np.zeros_like(tokens)
  for b, n in enumerate(right_mask.sum(1)):
    left_tokens[b, tokens.shape[1] - n:] = tokens[b, :n]
  logits = nnx.jit(lambda m, t, k: m.logits(m(t, jnp.maximum(jnp.cumsum(k, axis=1) - 1, 0), k)[0]))
  left, right = logits(model, left_tokens, left_mask), logits(model, tokens, right_mask)
  np.testing.assert_allclose(np.asarray(left)[left_mask > 0], np.asarray(right)[right_mask > 0], atol=1e-5)


def test_kv_cache_decoding_matches_full_forward(checkpoint):
  path, _ = checkpoint
  model = hf_io.load_model(path)
  tokens, mask = _batch("left", seed=1)
  prompt_len, T = 4, tokens.shape[1]
  # Left-padded prompts then real continuation tokens for every row.
  mask[:, prompt_len:] = 1
  full = _logits(model, tokens, mask)
  positions = tc.positions_from_mask(mask)
  cache = kv_cache.init_cache(model.cfg, batch=len(tokens), max_len=T + 2)
  step = nnx.jit(lambda m, t, p, k, c: m(t, p, k, c))
  hidden, cache = step(model, tokens[:, :prompt_len], positions[:, :prompt_len], mask[:, :prompt_len], cache)
  got = [np.asarray(model.logits(hidden))]
  for t in range(prompt_len, T):
    hidden, cache = step(model, tokens[:, t:t + 1], positions[:, t:t + 1], mask[:, t:t + 1], cache)
    got.append(np.asarray(model.logits(hidden)))
  got = np.concatenate(got, axis=1)
  assert int(cache.index) == T
  np.testing.assert_allclose(got[mask > 0], full[mask > 0], atol=1e-5)


@pytest.mark.parametrize("options", [dict(scan_layers=True, remat="full"), dict(remat="dots")])
def test_scan_and_remat_give_the_same_values_and_gradients(options):
  base = ModelConfig.from_hf(tc.hf_config("qwen3_tied"))
  tokens, mask = _batch("left")
  positions = tc.positions_from_mask(mask)

  def loss(model):
    hidden, _ = model(tokens, positions, mask)
    return jnp.sum(model.logits(hidden) ** 2 * mask[..., None])

  ref = Decoder(base, rngs=nnx.Rngs(3))
  other = Decoder(dataclasses.replace(base, **options), rngs=nnx.Rngs(3))
  (v_ref, g_ref), (v, g) = (nnx.jit(nnx.value_and_grad(loss))(m) for m in (ref, other))
  np.testing.assert_allclose(v, v_ref, rtol=1e-5)
  # The absolute floor scales with each gradient's largest entry: on a GPU, float32 sums in another order put
  # an entry of 0.003 2e-6 off where the largest entries are ~4 (one in 2048 on an H100).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max()), g, g_ref)


def test_decoding_a_scan_layers_model_inside_a_loop_with_a_donated_cache():
  cfg = dataclasses.replace(ModelConfig.from_hf(tc.hf_config("llama3_scaled_tied")), scan_layers=True)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  tokens, mask = _batch("left", seed=2)
  prompt_len, T = 5, tokens.shape[1]
  mask[:, prompt_len:] = 1
  positions = tc.positions_from_mask(mask)
  full = _logits(model, tokens, mask)
  graphdef, state = nnx.split(model)

  @jax.jit
  def prefill(state, cache):
    hidden, cache = nnx.merge(graphdef, state)(tokens[:, :prompt_len], positions[:, :prompt_len],
                                               mask[:, :prompt_len], cache)
    return cache

  @functools.partial(jax.jit, donate_argnums=1)
  def decode(state, cache):
    decoder = nnx.merge(graphdef, state)

    def step(t, carry):
      cache, out = carry
      tok = jax.lax.dynamic_slice_in_dim(jnp.asarray(tokens), t, 1, axis=1)
      pos = jax.lax.dynamic_slice_in_dim(jnp.asarray(positions), t, 1, axis=1)
      hidden, cache = decoder(tok, pos, jnp.ones_like(tok), cache)
      return cache, out.at[:, t].set(decoder.logits(hidden)[:, 0])

    out = jnp.zeros(full.shape, jnp.float32)
    return jax.lax.fori_loop(prompt_len, T, step, (cache, out))

  cache = prefill(state, kv_cache.init_cache(cfg, len(tokens), T))
  cache, out = decode(state, cache)
  np.testing.assert_allclose(np.asarray(out)[:, prompt_len:], full[:, prompt_len:], atol=1e-5)
  slot_mask = np.asarray(cache.mask_BxS)  # the cache rounds its slots up to whole key chunks, never valid
  assert slot_mask.shape[1] % kv_cache.KEY_CHUNK == 0 and slot_mask.shape[1] >= T
  np.testing.assert_array_equal(slot_mask[:, :T], mask)
  assert not slot_mask[:, T:].any()


def test_logits_depend_only_on_relative_positions(checkpoint):
  path, _ = checkpoint
  model = hf_io.load_model(path)
  tokens, mask = _batch("right", seed=3)
  positions = tc.positions_from_mask(mask)
  shifted = lambda k: np.asarray(model.logits(model(tokens, positions + k, mask)[0]))
  np.testing.assert_allclose(shifted(11), shifted(0), atol=1e-4)
