"""model.attention: the memory-efficient forms give the plain form's outputs, logits and gradients.

Tolerance: the forms differ only in the order of float32 additions (blockwise softmax sums, rescaled
running outputs), so outputs and gradients agree to a few float32 roundings relative to their scale: 1e-5
relative, 1e-6 absolute on outputs of order 1; gradients, which sum over T more terms, at 1e-5 of their
largest entry (or of 1, their terms' scale, where they cancel to about 0).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from asympo_jax.common.sharding import MESH_AXES
from asympo_jax.model import architecture
from asympo_jax.model import attention as attention_lib
from asympo_jax.model import hf_io
from asympo_jax.model import kv_cache
from asympo_jax.model.architecture import ModelConfig
from asympo_jax.model.decoder import Decoder, attention as plain_attention
from asympo_jax.rollout.sampler import Sampler
from asympo_jax.run import config as config_lib
from asympo_jax.run import validation
from tests import tiny_checkpoints as tc
from tests.test_model import _batch


def _plain(q, k, v, mask):
  """decoder.attention with the keys and values in its layouts and the dense causal + padding mask."""
  T = q.shape[1]
  dense = kv_cache.attention_mask(mask, jnp.zeros((), jnp.int32), T)
  return plain_attention(q, jnp.transpose(k, (0, 2, 3, 1))[:, :, None], jnp.swapaxes(v, 1, 2), dense)


@st.composite
def _problem(draw):
  B = draw(st.integers(1, 3))
  T = draw(st.integers(1, 24))
  K = draw(st.sampled_from([1, 2]))
  G = draw(st.sampled_from([1, 3]))
  hd = draw(st.sampled_from([4, 8]))
  block = draw(st.integers(1, 10))
  # Each row: left padding, real tokens, right padding (as train batches and prompts are), or any mask.
  rows = []
  for _ in range(B):
    if draw(st.booleans()):
      left = draw(st.integers(0, T - 1))
      real = draw(st.integers(1, T - left))
      rows.append([0] * left + [1] * real + [0] * (T - left - real))
    else:
      rows.append(draw(st.lists(st.integers(0, 1), min_size=T, max_size=T)))
  seed = draw(st.integers(0, 2**16))
  return B, T, K, G, hd, block, np.asarray(rows, np.int32), seed


@settings(max_examples=20, deadline=None)
@given(_problem())
def test_chunked_gives_the_plain_outputs_and_gradients(problem):
  B, T, K, G, hd, block, mask, seed = problem
  kq, kk, kv, kw = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(kq, (B, T, K * G, hd))
  k = jax.random.normal(kk, (B, T, K, hd))
  v = jax.random.normal(kv, (B, T, K, hd))
  # Only real queries count (a padding query's output is never scored, and the forms differ there).
  weights = jax.random.normal(kw, (B, T, K * G, hd)) * mask[:, :, None, None]
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights)
  chunked = lambda q, k, v, m: attention_lib.chunked(q, k, v, m, block)
  real = mask > 0
  # Compiled, not eager: each example has new shapes, and one compile costs a third of op-by-op dispatch.
  np.testing.assert_allclose(np.asarray(jax.jit(chunked)(q, k, v, mask))[real],
                             np.asarray(jax.jit(_plain)(q, k, v, mask))[real], rtol=1e-5, atol=1e-6)
  got = jax.jit(jax.grad(loss(chunked), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(_plain), argnums=(0, 1, 2)))(q, k, v)
  for g, w in zip(got, want):
    # An entry that cancels to 0 keeps the roundings of its order-1 terms.
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(float(np.abs(w).max()), 1.0))


def test_chunked_never_holds_the_scores_of_all_keys():
  # Forward and backward hold [B, H, T, block] blocks: no [.., T, T] array in the differentiated program.
  B, T, H, hd, block = 1, 64, 2, 8, 16
  q = k = v = jnp.ones((B, T, H, hd))
  mask = jnp.ones((B, T), jnp.int32)
  grad = jax.grad(lambda q, k, v: attention_lib.chunked(q, k, v, mask, block).sum(), argnums=(0, 1, 2))
  shapes = [tuple(var.aval.shape) for eqn in jax.make_jaxpr(grad)(q, k, v).jaxpr.eqns for var in eqn.outvars]
  assert not any(s[-2:] == (T, T) for s in shapes if len(s) >= 2)
  plain = jax.make_jaxpr(jax.grad(lambda q, k, v: _plain(q, k, v, mask).sum(), argnums=(0, 1, 2)))(q, k, v)
  assert any(tuple(var.aval.shape)[-1] == T and T in tuple(var.aval.shape)[:-1]
             for eqn in plain.jaxpr.eqns for var in eqn.outvars if len(var.aval.shape) >= 2)


@pytest.mark.parametrize("case", sorted(tc.CASES))
def test_a_chunked_model_gives_the_plain_logits_and_gradients(case, monkeypatch):
  monkeypatch.setattr(attention_lib, "KEY_BLOCK", 4)  # several blocks over the 9 tokens
  base = ModelConfig.from_hf(tc.hf_config(case))
  tokens, mask = _batch("left")
  positions = tc.positions_from_mask(mask)

  def loss(model):
    hidden, _ = model(tokens, positions, mask)
    return jnp.sum(jax.nn.log_softmax(model.logits(hidden)) * mask[..., None]), model.logits(hidden)

  results = []
  for attention in ("plain", "chunked"):
    model = Decoder(dataclasses.replace(base, attention=attention), rngs=nnx.Rngs(5))
    results.append(nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model))
  ((_, plain_logits), plain_grads), ((_, logits), grads) = results
  real = mask > 0
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(plain_logits)[real], rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max()),
               grads, plain_grads)


def test_a_chunked_prefill_samples_what_the_plain_one_does(tmp_path, monkeypatch):
  # The sampler's prefill attends with model.attention (its decode steps keep the plain form).
  monkeypatch.setattr(attention_lib, "KEY_BLOCK", 4)
  path = str(tmp_path / "qwen3")
  tc.make_checkpoint("qwen3_tied", path)
  rollout = config_lib.base_config().rollout
  rollout.update(prompts_per_step=2, group_size=2, max_prompt_len=16, max_new_tokens=6,
                 record_behaviour_logprobs=True)
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]
  samples = []
  for attention in ("plain", "chunked"):
    model = hf_io.load_model(path, attention=attention)
    samples.append(Sampler(model, rollout, eos_ids=[], pad_id=0).generate(nnx.state(model), prompts, seed=1, step=0))
  plain, chunked = samples
  np.testing.assert_array_equal(chunked.tokens_BxN, plain.tokens_BxN)
  np.testing.assert_allclose(chunked.logprobs_BxN, plain.logprobs_BxN, rtol=1e-5, atol=1e-5)


def test_a_memory_efficient_call_into_a_cache_holding_tokens_is_nan_not_wrong():
  cfg = dataclasses.replace(ModelConfig.from_hf(tc.hf_config("qwen3_tied")), attention="chunked")
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  tokens, mask = _batch("right")
  positions = tc.positions_from_mask(mask)
  cache = kv_cache.init_cache(cfg, len(tokens), 2 * tokens.shape[1])
  hidden, cache = model(tokens, positions, mask, cache)
  assert np.isfinite(np.asarray(hidden)).all()
  hidden, _ = model(tokens, positions, mask, cache)
  assert np.isnan(np.asarray(hidden)).all()


def test_splash_gives_the_plain_outputs_and_gradients_in_pallas_interpret_mode(monkeypatch):
  # The TPU kernel itself, run by Pallas' interpreter on CPU: padded to its 128-token tiles, padding as
  # segment 0, the scores scaled before the kernel.
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  monkeypatch.setattr(splash, "make_splash_mqa_single_device",
                      functools.partial(splash.make_splash_mqa_single_device, interpret=True))
  B, T, K, G, hd = 2, 20, 2, 2, 8
  kq, kk, kv, kw = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (B, T, H, hd)) for key, H in ((kq, K * G), (kk, K), (kv, K)))
  mask = np.ones((B, T), np.int32)
  mask[0, :5] = 0  # left padding
  mask[1, 15:] = 0  # right padding
  weights = jax.random.normal(kw, q.shape) * mask[:, :, None, None]
  splash_fn = attention_lib.ATTENTION["splash"]
  real = mask > 0
  np.testing.assert_allclose(np.asarray(splash_fn(q, k, v, mask))[real], np.asarray(_plain(q, k, v, mask))[real],
                             rtol=1e-5, atol=1e-5)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights)
  got = jax.grad(loss(splash_fn), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(_plain), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * max(float(np.abs(w).max()), 1.0))


def test_splash_compiles_for_a_tpu_topology():
  # No TPU needed: libtpu compiles a small model's gradient, splash kernels included, for a v5e 2x2.
  # libtpu comes with the test extra (pyproject.toml), so a missing TPU compiler is a broken install: fail.
  from jax.experimental import topologies
  topology = topologies.get_topology_desc("v5e:2x2", "tpu")
  cfg = dataclasses.replace(ModelConfig.from_hf(tc.hf_config("qwen3_tied")), attention="splash", dtype="bfloat16")
  mesh = Mesh(np.asarray(topology.devices).reshape(4, 1, 1), MESH_AXES)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
  abstract = lambda shape, dtype, spec: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))
  params = jax.tree.map(lambda x: abstract(x.shape, x.dtype, PartitionSpec()), state)
  tokens = abstract((8, 200), jnp.int32, PartitionSpec("data"))

  def loss(params, tokens_BxT, mask_BxT):
    model = nnx.merge(graphdef, params)
    hidden, _ = model(tokens_BxT, jnp.maximum(jnp.cumsum(mask_BxT, axis=1) - 1, 0), mask_BxT)
    return jnp.sum(model.logits(hidden))

  # At the default precision, as runs use it: Mosaic refuses the suite's "highest" on bfloat16 operands.
  with jax.set_mesh(mesh), jax.default_matmul_precision("default"):
    lowered = jax.jit(jax.grad(loss)).lower(params, tokens, tokens)
  assert "tpu_custom_call" in lowered.as_text()
  assert lowered.compile().memory_analysis().temp_size_in_bytes > 0


@pytest.mark.parametrize("platform,name", [("tpu", "splash"), ("gpu", "cudnn"), ("cpu", "chunked")])
def test_each_platform_gets_a_memory_efficient_attention_it_can_run(platform, name):
  assert attention_lib.memory_efficient(platform) == name
  assert attention_lib.runs_on(name, platform)
  assert not any(attention_lib.runs_on(kernel, platform) for kernel in ("splash", "cudnn") if kernel != name)


@pytest.mark.parametrize("platform", ["tpu", "gpu", "cpu"])
def test_auto_attention_is_the_memory_efficient_kernel_of_the_devices_platform(platform):
  cfg = config_lib.base_config()
  cfg.model.attention = "auto"
  want = {"tpu": "splash", "gpu": "cudnn", "cpu": "chunked"}[platform]
  assert architecture.options(cfg.model, platform)["attention"] == want
  for name in attention_lib.NAMES:  # a named attention is never replaced
    cfg.model.attention = name
    assert architecture.options(cfg.model, platform)["attention"] == name


def test_an_auto_config_passes_validation_and_runs_here():
  cfg = config_lib.base_config()
  cfg.rollout.prompts_per_step = 2
  cfg.model.attention = "auto"
  validation.validate(cfg, jax.devices())  # splash or cudnn would be refused on these CPU devices
  model_cfg = ModelConfig.from_hf(tc.hf_config(sorted(tc.CASES)[0]),
                                  **architecture.options(cfg.model, jax.devices()[0].platform))
  tokens, mask = _batch("left")
  hidden, _ = Decoder(model_cfg, rngs=nnx.Rngs(0))(tokens, tc.positions_from_mask(mask), mask)
  assert np.isfinite(np.asarray(hidden)[mask > 0]).all()
