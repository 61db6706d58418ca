"""The (data, fsdp, tensor) mesh, the logical rules, and sharded == replicated forwards on 8 CPU devices."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import PartitionSpec as P

from tests import tiny_checkpoints as tc
from asympo_jax.model import hf_io
from asympo_jax.model import kv_cache
from asympo_jax.common.checks import ConfigError
from asympo_jax.model.decoder import create_model
from asympo_jax.model.architecture import ModelConfig
from asympo_jax.common.sharding import RULES, logical_sharding, logical_spec, make_mesh, state_shardings


def _mesh_cfg(data, fsdp, tensor):
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def test_make_mesh_fills_the_rest_and_refuses_bad_sizes():
  assert dict(make_mesh(_mesh_cfg(-1, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(make_mesh(_mesh_cfg(1, -1, 1)).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(ConfigError, match=r"mesh\.data"):
    make_mesh(_mesh_cfg(-1, 3, 1))
  with pytest.raises(ConfigError, match=r"mesh\.fsdp"):
    make_mesh(_mesh_cfg(1, 2, 1))
  with pytest.raises(ConfigError, match=r"mesh\.tensor"):
    make_mesh(_mesh_cfg(-1, 1, -1))


# Qwen2 case: D=32, H=4, K=2, head_dim=8, F=48, V=101 (odd: the vocab axis cannot be split).
EXPECTED_SPECS = {
    ("embed",): P(None, "fsdp"),
    ("lm_head",): P("fsdp", None),
    ("final_norm",): P(None),
    ("layers", "input_norm"): P(None, None),
    ("layers", "post_norm"): P(None, None),
    ("layers", "q"): P(None, "fsdp", "tensor", None),
    ("layers", "k"): P(None, "fsdp", "tensor", None),
    ("layers", "v"): P(None, "fsdp", "tensor", None),
    ("layers", "o"): P(None, "tensor", None, "fsdp"),
    ("layers", "q_bias"): P(None, "tensor", None),
    ("layers", "k_bias"): P(None, "tensor", None),
    ("layers", "v_bias"): P(None, "tensor", None),
    ("layers", "gate"): P(None, "fsdp", "tensor"),
    ("layers", "up"): P(None, "fsdp", "tensor"),
    ("layers", "down"): P(None, "tensor", "fsdp"),
}


def _forward(model, tokens, mask, mesh=None):
  positions = jnp.asarray(tc.positions_from_mask(mask))
  fn = nnx.jit(lambda m, t, p, k: m.logits(m(t, p, k)[0]))
  if mesh is None:
    return np.asarray(fn(model, tokens, positions, mask))
  with jax.set_mesh(mesh):
    batch = logical_sharding(("act_batch", "act_seq"), tokens.shape, mesh)
    args = [jax.device_put(jnp.asarray(x), batch) for x in (tokens, positions, mask)]
    return np.asarray(fn(model, *args))


def test_sharded_forward_equals_replicated_and_params_follow_the_rules(tmp_path):
  tc.make_checkpoint("qwen2_bias_untied", str(tmp_path))
  mesh = make_mesh(_mesh_cfg(2, 2, 2))
  sharded = hf_io.load_model(str(tmp_path), mesh=mesh)
  for key, var in nnx.to_flat_state(nnx.state(sharded)):
    assert var[...].sharding.spec == EXPECTED_SPECS[key], key
    assert var[...].sharding.mesh == mesh
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 101, (4, 6)).astype(np.int32)
  mask = np.ones((4, 6), np.int32)
  mask[1, :2] = 0
  mask[3, :5] = 0
  replicated = _forward(hf_io.load_model(str(tmp_path)), tokens, mask)
  np.testing.assert_allclose(_forward(sharded, tokens, mask, mesh), replicated, atol=1e-5)


def test_create_model_on_a_mesh_and_sharded_cache_decoding():
  cfg = ModelConfig.from_hf(tc.hf_config("qwen3_tied"))
  mesh = make_mesh(_mesh_cfg(2, 2, 2))
  model = create_model(cfg, seed=0, mesh=mesh)
  want = state_shardings(nnx.state(model), mesh)
  for (key, var), (_, sharding) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(want)):
    assert var[...].sharding == sharding.get_raw_value(), key
  replicated = create_model(cfg, seed=0)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model), nnx.state(replicated))

  tokens = np.arange(8, dtype=np.int32).reshape(4, 2)
  mask = np.ones_like(tokens)
  positions = tc.positions_from_mask(mask)
  step = nnx.jit(lambda m, t, p, k, c: m(t, p, k, c))
  with jax.set_mesh(mesh):
    cache = kv_cache.init_cache(cfg, 4, 4)
    cache = jax.tree.map(lambda x, axes: jax.device_put(x, logical_sharding(axes, x.shape, mesh)),
                         cache, kv_cache.cache_axes(cfg.num_layers), is_leaf=lambda x: isinstance(x, tuple) and
                         all(isinstance(a, str) for a in x))
    hidden, cache = step(model, tokens, positions, mask, cache)
  hidden_ref, _ = step(replicated, tokens, positions, mask, kv_cache.init_cache(cfg, 4, 4))
  np.testing.assert_allclose(np.asarray(hidden), np.asarray(hidden_ref), atol=1e-5)


@given(st.lists(st.tuples(st.sampled_from(sorted(RULES) + ["unknown", None]), st.integers(1, 12)),
                min_size=1, max_size=4),
       st.sampled_from([dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=4, tensor=2), dict(data=8, fsdp=1,
                                                                                              tensor=1)]))
@settings(max_examples=200, deadline=None)
def test_logical_spec_splits_only_what_divides_and_uses_each_mesh_axis_once(dims, mesh_shape):
  axes, shape = zip(*dims)
  spec = logical_spec(axes, shape, mesh_shape)
  used = []
  for name, size, entry in zip(axes, shape, spec):
    mesh_axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
    assert set(mesh_axes) <= set(RULES.get(name, ()) if name else ())
    assert size % math.prod(mesh_shape[a] for a in mesh_axes) == 0
    used += mesh_axes
  assert len(used) == len(set(used))
