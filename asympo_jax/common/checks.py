"""Config errors and value checks: every check names the key it refuses."""
from __future__ import annotations

from typing import Any

import ml_collections


def unknown_keys(cfg: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Dotted names of the keys in `cfg` that `schema` does not have."""
  bad = []
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if key not in schema:
      bad.append(name)
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(schema[key], ml_collections.ConfigDict):
      bad += unknown_keys(value, schema[key], name + ".")
  return bad


class ConfigError(ValueError):
  """A config value that cannot run; the message names the key."""


def check(condition: Any, key: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{key}: {message}")
