"""The schema refuses keys it does not know, in config files and on the command line, naming each with the
known key nearest to it."""
import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from asympo_jax.common.checks import ConfigError
from asympo_jax.run import config
from asympo_jax.run.config import base_config, validate_keys

REPO = pathlib.Path(__file__).resolve().parents[1]
# paper.py holds what the paper configs share; every other file is a config.
CONFIG_FILES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if "def get_config(" in p.read_text())


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_file_sets_only_known_keys(name):
  validate_keys(importlib.import_module(f"configs.{name}").get_config())


@pytest.mark.parametrize("section,key,nearest", [
    ("objective", "negtive_scale", "objective.negative_scale"), ("rollout", "stalenes", "rollout.staleness"),
    (None, "sead", "seed"), ("eval", "sample", "eval.samples")])
def test_unknown_keys_are_named_with_the_nearest_known_key(section, key, nearest):
  cfg = base_config()
  (cfg[section] if section else cfg)[key] = 1
  dotted = f"{section}.{key}" if section else key
  with pytest.raises(ConfigError, match=re.escape(f"config.{dotted}: unknown key (nearest known key: config.{nearest})")):
    validate_keys(cfg)


def test_override_keys_reads_every_flag_form():
  argv = ["train.py", "--config=configs/micro.py", "--config.rollout.staleness=2", "-config.seed", "3",
          "--noconfig.metrics.tensorboard", "--config.rollout.stop_sequences[0]=[1]", "--other=1", "--",
          "--config.after_dashes=1"]
  assert config.override_keys(argv) == ["rollout.staleness", "seed", "metrics.tensorboard", "rollout.stop_sequences"]
  config.check_override_keys(config.override_keys(argv))
  with pytest.raises(ConfigError, match=re.escape("config.rollout.stalenes: unknown key (nearest known key: "
                                                  "config.rollout.staleness); config.nonexistent: unknown key")):
    config.check_override_keys(["rollout.stalenes", "model", "nonexistent"])


@pytest.mark.parametrize("command", [
    ["train.py", "--config=configs/micro.py"],
    ["eval.py", "--checkpoint=/nonexistent"],
    ["sweep.py", "--config=configs/micro.py", "--root=unused"],
])
def test_entry_points_refuse_an_unknown_override_before_running(command, tmp_path):
  script, *flags = command
  done = subprocess.run([sys.executable, str(REPO / script), *flags, "--config.rollout.stalenes=3"], cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last == ("asympo_jax.common.checks.ConfigError: config.rollout.stalenes: unknown key "
                  "(nearest known key: config.rollout.staleness)"), done.stderr[-2000:]


def test_a_sweep_axis_over_an_unknown_key_is_refused_before_any_run(tmp_path):
  done = subprocess.run([sys.executable, str(REPO / "sweep.py"), "--config=configs/micro.py",
                         f"--root={tmp_path / 'sweep'}", "--grid=rollout.stalenes=0,1"], cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)
  assert "config.rollout.stalenes: unknown key (nearest known key: config.rollout.staleness)" in done.stderr
  assert not (tmp_path / "sweep").exists()


def test_a_saved_config_gets_the_defaults_of_keys_it_predates_and_keeps_its_own_values():
  saved = base_config().to_dict()
  del saved["model"]["dtype"], saved["model"]["attention"], saved["rollout"]["engine"]
  saved["model"]["param_dtype"], saved["rollout"]["staleness"] = "bfloat16", 7
  cfg = config.with_defaults(config.ml_collections.ConfigDict(saved))
  assert (cfg.model.dtype, cfg.model.attention, cfg.rollout.engine) == ("float32", "plain", "static")
  assert (cfg.model.param_dtype, cfg.rollout.staleness) == ("bfloat16", 7)
  saved["model"]["attention_kind"] = "plain"  # a key the schema does not have
  with pytest.raises(ConfigError, match="attention_kind"):
    config.with_defaults(config.ml_collections.ConfigDict(saved))
