"""Config errors and value checks: every check names the key it refuses."""
from __future__ import annotations

import difflib
from typing import Any, Sequence

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


def known_keys(schema: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Dotted names of every key of `schema`, sections and the keys inside them."""
  names = []
  for key, value in schema.items():
    names.append(f"{prefix}{key}")
    if isinstance(value, ml_collections.ConfigDict):
      names += known_keys(value, f"{prefix}{key}.")
  return names


class ConfigError(ValueError):
  """A config value that cannot run; the message names the key."""


def check(condition: Any, key: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"config.{key}: {message}")


def refuse_unknown(keys: Sequence[str], known: Sequence[str]) -> None:
  """Raises ConfigError naming each of the dotted `keys` that is not `known`, with the known key nearest to it
  (difflib's ratio)."""
  bad = [k for k in keys if k not in known]
  if bad:
    raise ConfigError("; ".join(f"config.{b}: unknown key (nearest known key: config."
                                f"{difflib.get_close_matches(b, known, n=1, cutoff=0.0)[0]})" for b in bad))
