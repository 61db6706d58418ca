"""Shared test fixtures for the train step and trainer: a tiny Qwen3-style decoder, synthetic batches, and a
checkpoint cut short."""
from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from asympo_jax.common import sharding
from asympo_jax.rollout.train_batch import TrainBatch
from asympo_jax.run.config import base_config
from asympo_jax.model.decoder import Decoder
from asympo_jax.model.architecture import ModelConfig

TINY = ModelConfig(model_type="qwen3", vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2,
                   head_dim=8, intermediate_size=32, rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
                   qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=True, tie_embeddings=True,
                   max_position_embeddings=128, initializer_range=0.2)


def tiny_model(mesh: Mesh | None = None, seed: int = 0, cfg: ModelConfig = TINY) -> Decoder:
  """The tiny decoder (or `cfg`'s), its parameters placed by the sharding rules when a mesh is given."""
  model = Decoder(cfg, rngs=nnx.Rngs(seed))
  if mesh is not None:
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, sharding.state_shardings(state, mesh))
    model = nnx.merge(graphdef, state)
  return model


def tiny_config(**overrides):
  cfg = base_config()
  cfg.rollout.prompts_per_step, cfg.rollout.group_size = 4, 4
  cfg.rollout.max_prompt_len, cfg.rollout.max_new_tokens = 4, 8
  cfg.optim.lr = 1e-2
  cfg.optim.clip_norm = 0.0
  for key, value in overrides.items():
    node = cfg
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return cfg


def synthetic_batch(cfg, seed: int, behaviour: bool = False) -> TrainBatch:
  """A train batch: left-padded prompts, right-padded responses, 0/1 rewards."""
  rng = np.random.default_rng(seed)
  B = cfg.rollout.prompts_per_step * cfg.rollout.group_size
  Tp, Tr = cfg.rollout.max_prompt_len, cfg.rollout.max_new_tokens
  pos = np.arange(Tp + Tr)[None]
  prompt_len = rng.integers(1, Tp + 1, (B, 1))
  resp_len = rng.integers(1, Tr + 1, (B, 1))
  prompt = (pos < Tp) & (pos >= Tp - prompt_len)
  resp = (pos >= Tp) & (pos < Tp + resp_len)
  batch = TrainBatch(tokens_BxT=rng.integers(0, TINY.vocab_size, (B, Tp + Tr)).astype(np.int32),
                     input_mask_BxT=(prompt | resp).astype(np.int32), loss_mask_BxT=resp.astype(np.float32),
                     rewards_B=rng.integers(0, 2, (B,)).astype(np.float32), policy_version_B=np.zeros((B,), np.int32))
  if behaviour:
    behaviour_BxT = np.where(resp, -rng.uniform(2.0, 6.0, resp.shape), 0.0).astype(np.float32)
    batch = batch._replace(behaviour_logprobs_BxT=behaviour_BxT)
  return batch


def truncate_data_files(step_dir: str | os.PathLike) -> None:
  """Cuts every data file of a checkpoint's arrays in half, as a kill or a full disk mid-write would (which
  of orbax's OCDBT files holds an array depends on its size and on the merge of the processes' files)."""
  for d, _, names in os.walk(os.path.join(step_dir, "state")):
    for name in names if os.path.basename(d) == "d" else []:
      path = os.path.join(d, name)
      os.truncate(path, os.path.getsize(path) // 2)
