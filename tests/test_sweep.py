"""Issue 7 acceptance 2: the sweep runner runs a real 2x2 grid of train.py on the micro config."""
import csv
import math
import os
import pathlib

from asympo_jax.run import grid as sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_two_by_two_grid_on_the_micro_config(tmp_path, monkeypatch):
  # The runs see the machine as a user's train.py does (one CPU device, not the suite's eight), and share
  # compilations through JAX's persistent cache.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  root = tmp_path / "sweep"
  axes = [("rollout.staleness", ["0", "1"]), ("objective.name", ["naive", "asympo"])]
  out = tmp_path / "report"
  rows = sweep.sweep(str(REPO / "train.py"), str(REPO / "configs" / "micro.py"), axes, str(root),
                     facet="rollout.staleness", out_dir=str(out))
  assert [r["run"] for r in rows] == ["staleness=0,name=naive", "staleness=0,name=asympo",
                                      "staleness=1,name=naive", "staleness=1,name=asympo"]
  for r in rows:
    assert r["status"] == "done" and r["steps"] == 2
    assert 0.0 <= r["final_accuracy"] <= r["best_accuracy"] <= 1.0
    assert not math.isnan(r["final_reward"])
  with open(out / "results.csv") as f:
    assert [r["objective.name"] for r in csv.DictReader(f)] == ["naive", "asympo", "naive", "asympo"]
  assert (out / "results.md").read_text().count("\n") == 2 + 4
  for png in ("accuracy.png", "reward.png", "neg_pos_ratio.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (root / png).exists()
  assert all(os.path.exists(root / r["run"] / sweep.DONE_NAME) for r in rows)
