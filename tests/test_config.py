"""The schema refuses keys it does not know, naming them."""
import pytest

from asympo_jax.common.checks import ConfigError
from asympo_jax.run.config import base_config, validate_keys


def test_base_config_is_valid():
  validate_keys(base_config())


@pytest.mark.parametrize("section,key", [("objective", "negtive_scale"), ("rollout", "stalenes"), (None, "sead")])
def test_unknown_keys_are_named(section, key):
  cfg = base_config()
  (cfg[section] if section else cfg)[key] = 1
  dotted = f"{section}.{key}" if section else key
  with pytest.raises(ConfigError, match=f"config.{dotted}"):
    validate_keys(cfg)
