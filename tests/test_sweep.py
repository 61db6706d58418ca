"""The sweep runner runs real grids of train.py on the micro config: staleness x objective, and the
behaviour-corrected objectives through sweep.py as a user runs it."""
import csv
import math
import os
import pathlib
import subprocess
import sys

import pytest

from asympo_jax.run import grid as sweep

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # four full micro runs; the default suite runs sweep.py for real in the test below, and the
# table, plots and resume on a fake train.py in test_sweep_mechanics
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


NEW_OBJECTIVES = ["decoupled_ppo", "gspo", "cispo", "dr_grpo"]
BEHAVIOUR = ["--config.rollout.record_behaviour_logprobs=True", "--config.rollout.behaviour_logprobs=sampled",
             "--config.rollout.temperature=0.7", "--config.rollout.top_p=0.9"]


def run_sweep_script(tmp_path, names, *extra):
  """sweep.py over objective.name on the micro config, as a user runs it; the rows of its results.csv."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  root = tmp_path / "sweep"
  cmd = [sys.executable, str(REPO / "sweep.py"), f"--config={REPO / 'configs' / 'micro.py'}",
         f"--grid=objective.name={','.join(names)}", f"--root={root}", *BEHAVIOUR, *extra]
  subprocess.run(cmd, check=True, cwd=REPO, env=env)
  with open(root / "results.csv") as f:
    return list(csv.DictReader(f))


def test_sweep_script_runs_behaviour_corrected_objectives_on_the_micro_config(tmp_path):
  # One RL step each, no warm start or eval: the objectives' end-to-end path at the least cost.
  names = ["gspo", "dr_grpo"]
  rows = run_sweep_script(tmp_path, names, "--config.train.steps=1", "--config.warm_start.steps=0",
                          "--config.eval.every=0")
  assert [r["objective.name"] for r in rows] == names
  for r in rows:
    assert r["status"] == "done" and r["steps"] == "1"
    assert math.isfinite(float(r["mean_offpolicy_kl"]))  # the behaviour log-probs reached the train step


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four full micro runs (warm start, eval) take minutes on a shared machine
def test_grid_over_every_new_objective_on_the_micro_config(tmp_path):
  rows = run_sweep_script(tmp_path, NEW_OBJECTIVES)
  assert [r["objective.name"] for r in rows] == NEW_OBJECTIVES
  for r in rows:
    assert r["status"] == "done" and r["steps"] == "2"
    assert 0.0 <= float(r["final_accuracy"]) <= float(r["best_accuracy"]) <= 1.0
    assert math.isfinite(float(r["mean_offpolicy_kl"]))
