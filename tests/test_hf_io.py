"""HF import/export: round trips through transformers, shape and name checks."""
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import tiny_checkpoints as tc
from asympo_jax.model import hf_io
from asympo_jax.common.checks import ConfigError
from asympo_jax.run.config import base_config
from asympo_jax.model.architecture import UnsupportedModelError, options, validate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("qwen2"))
  tc.make_checkpoint("qwen2_bias_untied", path)
  return path


def _params(model):
  return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize("case", ["qwen2_bias_untied", "llama3_scaled_tied"])
@pytest.mark.parametrize("max_shard_bytes", [2**30, 20_000])
def test_export_loads_in_transformers_and_round_trips(case, max_shard_bytes, tmp_path):
  source = str(tmp_path / "source")
  torch_model = tc.make_checkpoint(case, source)
  model = hf_io.load_model(source)
  out = str(tmp_path / "exported")
  hf_io.save_model(model, out, max_shard_bytes=max_shard_bytes)
  sharded = os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  assert sharded == (max_shard_bytes < 2**30)
  reloaded_torch = transformers.AutoModelForCausalLM.from_pretrained(
      out, dtype=torch.float32, attn_implementation="eager").eval()
  tokens = np.random.default_rng(0).integers(0, 101, (2, 6))
  mask = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]])
  real = mask > 0
  np.testing.assert_array_equal(tc.torch_logits(reloaded_torch, tokens, mask)[real],
                                tc.torch_logits(torch_model, tokens, mask)[real])
  again = _params(hf_io.load_model(out))
  first = _params(model)
  assert again.keys() == first.keys()
  for key in first:
    np.testing.assert_array_equal(again[key], first[key], err_msg=str(key))
  assert hf_io.load_config(out) == model.cfg


def test_bfloat16_params(checkpoint, tmp_path):
  model = hf_io.load_model(checkpoint, param_dtype="bfloat16")
  assert all(v.dtype == jax.numpy.bfloat16 for v in jax.tree.leaves(nnx.state(model)))
  tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
  mask = np.ones_like(tokens)
  logits = lambda m: np.asarray(m.logits(m(tokens, tc.positions_from_mask(mask), mask)[0]))
  low, high = logits(model), logits(hf_io.load_model(checkpoint))
  assert low.dtype == np.float32
  assert np.abs(low - high).max() < 0.05 * np.abs(high).max()
  hf_io.save_model(model, str(tmp_path))
  assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"
  again = hf_io.load_model(str(tmp_path), param_dtype="bfloat16")
  for key, value in _params(model).items():
    np.testing.assert_array_equal(_params(again)[key], value)


def _rewrite(path, change):
  file = os.path.join(path, "model.safetensors")
  tensors = safetensors.numpy.load_file(file)
  change(tensors)
  safetensors.numpy.save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor_is_named(checkpoint, tmp_path):
  os.system(f"cp -r {checkpoint}/. {tmp_path}")
  _rewrite(str(tmp_path), lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
  with pytest.raises(hf_io.CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias"):
    hf_io.load_model(str(tmp_path))


def test_wrong_shape_is_named(checkpoint, tmp_path):
  os.system(f"cp -r {checkpoint}/. {tmp_path}")

  def shrink(t):
    t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:-1]

  _rewrite(str(tmp_path), shrink)
  with pytest.raises(hf_io.CheckpointError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*\(47, 32\)"):
    hf_io.load_model(str(tmp_path))


@pytest.mark.parametrize("config, message", [
    (transformers.MistralConfig(architectures=["MistralForCausalLM"]), "MistralForCausalLM"),
    (transformers.Qwen2Config(use_sliding_window=True), "use_sliding_window"),
    (transformers.LlamaConfig(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
     "rope_type='yarn'"),
    (transformers.LlamaConfig(hidden_act="gelu"), "hidden_act"),
])
def test_unsupported_configs_are_refused_by_name(config, message, tmp_path):
  config.save_pretrained(tmp_path)
  with pytest.raises(UnsupportedModelError, match=message):
    hf_io.load_config(str(tmp_path))


def test_model_config_section_is_validated_by_key(checkpoint):
  cfg = base_config()
  cfg.model.hf_path = checkpoint
  validate(cfg.model)
  assert hf_io.load_config(checkpoint, **options(cfg.model, "cpu")).param_dtype == "float32"
  for key, value in [("param_dtype", "float16"), ("dtype", "float16"), ("remat", "some"),
                     ("hf_path", "/nonexistent")]:
    bad = base_config()
    bad.model[key] = value
    with pytest.raises(ConfigError, match=f"model.{key}"):
      validate(bad.model)


@st.composite
def _blocks(draw):
  ndim = draw(st.integers(1, 4))
  shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
  layout = draw(st.sampled_from([None, 0] + list(range(1, ndim))))
  index = []
  for n in shape:
    start = draw(st.integers(0, n - 1))
    index.append(slice(start, draw(st.integers(start + 1, n))))
  return shape, layout, tuple(index)


@given(_blocks())
@settings(max_examples=200, deadline=None)
def test_read_block_equals_slicing_the_whole_tensor(block):
  shape, layout, index = block
  ours = np.arange(np.prod(shape)).reshape(shape)
  hf = hf_io.to_hf(ours, layout)
  assert hf.shape == hf_io.hf_shape(shape, layout)
  np.testing.assert_array_equal(hf_io.to_ours(hf, shape, layout), ours)
  np.testing.assert_array_equal(hf_io.read_block(hf, shape, layout, index), ours[index])
