"""validate(cfg, devices): bad values fail before anything compiles, with the key in the message."""
import jax
import pytest

from asympo_jax.run import validation
from asympo_jax.common.checks import ConfigError
from asympo_jax.run.config import base_config


def _cfg(**overrides):
  cfg = base_config()
  cfg.rollout.prompts_per_step, cfg.rollout.group_size = 4, 4
  for key, value in overrides.items():
    *section, name = key.split(".")
    (cfg[section[0]] if section else cfg)[name] = value
  return cfg


def test_the_defaults_pass_on_8_devices():
  validation.validate(_cfg(), jax.devices())


BAD = [
    ({}, "unknown key", "rollout.stalenes"),
    ({"mesh.data": 3}, "mesh.data", None),  # 3 does not divide 8 devices
    ({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1}, "mesh", None),  # uses 4 of 8
    ({"rollout.prompts_per_step": 3}, "rollout.prompts_per_step", None),  # 12 rows over 8 shards
    ({"train.micro_batches": 4}, "rollout.prompts_per_step", None),  # 4-row micro-batches over 8 shards
    ({"train.micro_batches": 3}, "train.micro_batches", None),  # 3 does not divide 16 rows
    ({"rollout.staleness": -1}, "rollout.staleness", None),
    ({"objective.name": "ppo"}, "objective.name", None),
    ({"optim.schedule": "linear"}, "optim.schedule", None),
    ({"checkpoint.keep": 0}, "checkpoint.keep", None),
    ({"distributed.num_processes": 2}, "distributed.coordinator", None),
    ({"train.steps": 0}, "train.steps", None),
    ({"model.hf_path": "/nonexistent"}, "not a Hugging Face directory", None),
    ({"model.remat": "some"}, "model.remat", None),
    ({"model.dtype": "float16"}, "model.dtype", None),
    ({"model.attention": "flash"}, "model.attention", None),
    ({"model.attention": "splash"}, "runs on tpu only", None),  # the suite's devices are CPUs
    ({"model.attention": "cudnn"}, "runs on gpu only", None),
    ({"rollout.group_size": 1}, "rollout.group_size", None),
    ({"seed": 2**31}, "seed", None),
    ({"seed": -1}, "seed", None),
]


@pytest.mark.parametrize("overrides,key,extra", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_values_name_the_key(overrides, key, extra):
  cfg = _cfg(**overrides)
  if extra:
    section, name = extra.split(".")
    with cfg.unlocked():
      cfg[section][name] = 1
  events = []
  jax.monitoring.register_event_duration_secs_listener(lambda name, *a, **k: events.append(name))
  with pytest.raises(ConfigError, match=key):
    validation.validate(cfg, jax.devices())
  assert not [e for e in events if "compile" in e]


def test_more_prompts_than_processes_need():
  cfg = _cfg(**{"rollout.prompts_per_step": 4, "train.micro_batches": 1})
  with pytest.raises(ConfigError, match="rollout.prompts_per_step"):
    validation.validate(cfg, jax.devices()[:2], num_processes=3)


def test_disjoint_rollout_devices_are_left_out_of_the_training_mesh():
  cfg = _cfg(**{"rollout.devices": "6:8"})
  with pytest.raises(ConfigError, match="mesh"):  # data=8 would need the 2 rollout devices too
    validation.validate(_cfg(**{"rollout.devices": "6:8", "mesh.data": 8}), jax.devices())
  assert validation.training_devices(cfg, jax.devices()) == jax.devices()[:6]
  cfg.rollout.prompts_per_step = 3  # 12 rows: over 6 training shards and 2 rollout devices
  validation.validate(cfg, jax.devices())
