"""The paper configs: they pass every check train.py makes on an 8-device host, and their recipe reaches the
published architectures (config.json values and parameter counts from the models' cards)."""
import importlib

import jax
import numpy as np
import pytest
import transformers
from flax import nnx

from asympo_jax.model import architecture as model_config
from asympo_jax.model import hf_io
from asympo_jax.run import pipeline
from asympo_jax.run import validation
from asympo_jax.common.checks import ConfigError
from asympo_jax.model.decoder import Decoder
from asympo_jax.model.architecture import ModelConfig

ROPE = dict(rope_theta=1_000_000.0, max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
            bos_token_id=151643, eos_token_id=151643)
# config.json values of the hub checkpoints, and the parameter counts their model cards state (total, non-embedding).
MODELS = {
    "qwen3_1p7b_base": (transformers.Qwen3Config(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, **ROPE), 1.7e9, 1.4e9),
    "qwen3_4b_base": (transformers.Qwen3Config(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, **ROPE), 4.0e9, 3.6e9),
    "llama3p2_3b_instruct": (transformers.LlamaConfig(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=[128001, 128008, 128009], rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                                   high_freq_factor=4.0, original_max_position_embeddings=8192)),
     3.21e9, None),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_paper_config_passes_every_check_on_an_8_device_host(name, tmp_path):
  hf, _, _ = MODELS[name]
  hf.save_pretrained(tmp_path)
  cfg = importlib.import_module(f"configs.{name}").get_config()
  with cfg.unlocked():
    cfg.model.hf_path = str(tmp_path)
  validation.validate(cfg, jax.devices()[:8])
  pipeline.validate(cfg)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_paper_config_refuses_a_checkpoint_that_is_not_downloaded(name):
  cfg = importlib.import_module(f"configs.{name}").get_config()
  with pytest.raises(ConfigError, match="model.hf_path.*config.json"):
    validation.validate(cfg, jax.devices()[:8])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_paper_model_has_the_published_parameter_count(name):
  hf, total, non_embedding = MODELS[name]
  cfg = importlib.import_module(f"configs.{name}").get_config()
  model_cfg = ModelConfig.from_hf(hf, **model_config.options(cfg.model, "cpu"))
  abstract = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert count == pytest.approx(total, rel=0.03)
  if non_embedding:
    assert count - hf.vocab_size * hf.hidden_size == pytest.approx(non_embedding, rel=0.03)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_paper_config_ships_the_published_architecture(name):
  hf, _, _ = MODELS[name]
  cfg = importlib.import_module(f"configs.{name}").get_config()
  assert hf_io.load_config(cfg.model.config_json) == ModelConfig.from_hf(hf)
