"""MetricsWriter: JSONL records, TensorBoard events, resume truncation, silence off process 0."""
import os

import pytest

from asympo_jax.train import metrics
from asympo_jax.common.checks import ConfigError
from asympo_jax.run.config import base_config


def test_jsonl_tensorboard_and_resume(tmp_path):
  cfg = base_config().metrics
  w = metrics.MetricsWriter(str(tmp_path), cfg, {"seed": 0}, is_main=True)
  for step in range(4):
    w.write(step, {"loss": step * 0.5, "reward/mean": 1.0})
  w.close()
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path))] == [0, 1, 2, 3]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
  # Resumed after step 1: the records of steps 2 and 3 from before the kill are replaced.
  w = metrics.MetricsWriter(str(tmp_path), cfg, {}, is_main=True, start_step=1)
  w.write(2, {"loss": 9.0})
  w.close()
  records = metrics.read_jsonl(str(tmp_path))
  assert [r["step"] for r in records] == [0, 1, 2]
  assert records[-1]["loss"] == 9.0 and records[1] == {"step": 1, "loss": 0.5, "reward/mean": 1.0}


def test_other_processes_write_nothing(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path / "run"), base_config().metrics, {}, is_main=False)
  w.write(0, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "run").exists()


def test_wandb_is_optional(monkeypatch):
  cfg = base_config().metrics
  metrics.validate(cfg)  # off by default: never imported
  cfg.wandb_project = "p"
  monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ConfigError, match="metrics.wandb_project"):
    metrics.validate(cfg)
