"""The pipeline's pieces: the warm-start run's config and the RL summary."""
import copy
import json

import jax
import pytest

from asympo_jax.run import pipeline
from asympo_jax.run import validation
from asympo_jax.common.checks import ConfigError
from asympo_jax.run.config import base_config


@pytest.fixture
def cfg(tmp_path):
  c = base_config()
  c.workdir = str(tmp_path / "run")
  c.model.scratch = "tiny"
  c.data.train = "gym:chain_sum?size=20&seed=1"
  c.rollout.prompts_per_step, c.rollout.group_size, c.rollout.staleness = 4, 4, 2
  c.warm_start.steps, c.warm_start.lr, c.warm_start.warmup_steps = 30, 3e-3, 5
  c.objective.kl_coef = 0.1
  c.eval.every = 5
  return c


def test_warm_start_config(cfg, tmp_path):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  w = pipeline.warm_start_config(cfg, str(hf))
  assert w.workdir == cfg.workdir + "/warm_start"
  assert (w.model.hf_path, w.model.scratch) == (str(hf), "")
  assert (w.objective.name, w.objective.kl_coef) == ("nll", 0.0)
  assert (w.train.steps, w.optim.lr, w.optim.warmup_steps) == (30, 3e-3, 5)
  assert (w.rollout.prompts_per_step, w.rollout.group_size, w.rollout.staleness) == (16, 1, 0)
  assert (w.eval.every, w.warm_start.steps) == (0, 0)
  assert cfg.objective.name == "asympo" and cfg.rollout.group_size == 4  # the RL config is untouched
  validation.validate(w, jax.devices())


def test_the_warm_start_cache_key_ignores_what_only_rl_reads(cfg):
  key = pipeline.warm_start_key(cfg)
  rl_only = {"objective.name": "grpo", "objective.split_grad_norms": True, "rollout.staleness": 7,
             "optim.lr": 0.5, "train.steps": 3, "workdir": "/elsewhere", "eval.every": 1,
             "warm_start.cache_dir": "/cache", "checkpoint.every": 2, "metrics.tensorboard": False}
  warm = {"seed": 1, "warm_start.steps": 31, "warm_start.lr": 1e-3, "warm_start.target": "solution",
          "data.train": "gym:chain_sum?size=20&seed=2", "model.scratch": "small", "rollout.group_size": 2,
          "rollout.max_new_tokens": 32}
  for changes, same in ((rl_only, True), (warm, False)):
    for dotted, value in changes.items():
      changed = copy.deepcopy(cfg)
      if "." in dotted:
        section, name = dotted.split(".")
        changed[section][name] = value
      else:
        changed[dotted] = value
      assert (pipeline.warm_start_key(changed) == key) == same, dotted


def test_summary_states_start_end_and_gain(tmp_path):
  key = "eval/task/greedy_accuracy"
  records = [{"step": 0, key: 0.4}, {"step": 1, "reward/mean": 0.3}, {"step": 5, key: 0.7},
             {"step": 10, key: 0.55, "reward/mean": 0.5}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  summary = pipeline.summarize(str(tmp_path))
  s = summary["eval"][key]
  assert (s["start_step"], s["start"], s["end_step"], s["end"], s["best"]) == (0, 0.4, 10, 0.55, 0.7)
  assert s["gain_points"] == pytest.approx(15.0)
  assert json.loads((tmp_path / "summary.json").read_text()) == summary
  assert "40.0% at step 0 -> 55.0% at step 10 (+15.0 points; best 70.0%)" in pipeline.describe(summary)


@pytest.mark.parametrize("overrides,key", [
    ({"model.scratch": ""}, "model.hf_path"),  # no model at all
    ({"model.hf_path": "/some/dir"}, "model.hf_path"),  # two models
    ({"model.scratch": "huge"}, "model.scratch"),
    ({"warm_start.steps": -1}, "warm_start.steps"),
    ({"warm_start.lr": 0.0}, "warm_start.lr"),
    ({"warm_start.warmup_steps": 31}, "warm_start.warmup_steps"),
    ({"warm_start.target": "gold"}, "warm_start.target"),
    ({"warm_start.cache_dir": None}, "warm_start.cache_dir"),
])
def test_bad_pipeline_values_name_the_key(cfg, overrides, key):
  for dotted, value in overrides.items():
    section, name = dotted.split(".")
    cfg[section][name] = value
  with pytest.raises(ConfigError, match=f"config.{key}"):
    pipeline.validate(cfg)
  cfg.warm_start.steps = 0  # turning the warm start off needs no other change
  if key.startswith("warm_start"):
    pipeline.validate(cfg)
