"""The sweep runner's bookkeeping, driven by a stand-in training script that writes metrics.jsonl."""
import csv
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from asympo_jax.run import grid as sweep

REPO = pathlib.Path(__file__).resolve().parents[1]

FAKE_TRAIN = textwrap.dedent('''
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    workdir = args["config.workdir"]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "launches"), "a") as f:
        f.write("x")
    if args.get("config.objective.name") == "boom" and not os.path.exists(os.path.join(workdir, "ok")):
        open(os.path.join(workdir, "ok"), "w").close()
        sys.exit(3)  # fails once, then succeeds when the sweep is run again
    lr = float(args["config.optim.lr"])
    accs = [0.2, 0.6, 0.3] if lr > 1 else [0.2, 0.4, 0.5]
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step, acc in enumerate(accs):
            f.write(json.dumps({"step": step, "eval/task/greedy_accuracy": acc, "reward/mean": acc / 2,
                                "balance/neg_pos_ratio": [1.0, float("inf"), 3.0][step]}) + "\\n")
''')


@pytest.fixture
def fake_train(tmp_path):
  path = tmp_path / "train.py"
  path.write_text(FAKE_TRAIN)
  return str(path)


def test_grid_names_and_parsing():
  axes = [sweep.parse_axis("rollout.staleness=0,2"), sweep.parse_axis("objective.name=naive,asympo")]
  points = sweep.grid(axes)
  assert points == [{"rollout.staleness": "0", "objective.name": "naive"},
                    {"rollout.staleness": "0", "objective.name": "asympo"},
                    {"rollout.staleness": "2", "objective.name": "naive"},
                    {"rollout.staleness": "2", "objective.name": "asympo"}]
  assert sweep.run_name(points[1]) == "staleness=0,name=asympo"
  with pytest.raises(ValueError, match="KEY=V1,V2"):
    sweep.parse_axis("rollout.staleness")
  with pytest.raises(ValueError, match="rollout.staleness.*more than once"):
    sweep.grid([("rollout.staleness", ["0"]), ("rollout.staleness", ["2"])])


def test_cli_redraws_a_finished_sweep_into_out(tmp_path):
  # Every point is already done, so the CLI only reads metrics and writes the table and plots to --out.
  root, out = tmp_path / "runs", tmp_path / "report"
  for lr in ("0.5", "2.0"):
    run = root / f"lr={lr}"
    run.mkdir(parents=True)
    (run / sweep.DONE_NAME).write_text("{}")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval/t/greedy_accuracy": float(lr) / 4}) + "\n")
  cmd = [sys.executable, str(REPO / "sweep.py"), "--config=configs/default.py", "--grid=optim.lr=0.5,2.0",
         f"--root={root}", f"--out={out}", "--config.seed=3"]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(out / "results.csv") as f:
    assert [float(r["final_accuracy"]) for r in csv.DictReader(f)] == [0.125, 0.5]
  assert (out / "accuracy.png").exists() and not (root / "results.csv").exists()


def test_sweep_writes_table_and_plots_and_skips_finished_runs(tmp_path, fake_train):
  root = str(tmp_path / "sweep")
  axes = [("optim.lr", ["0.5", "2.0"]), ("objective.name", ["naive", "boom"])]
  with pytest.raises(RuntimeError, match="2 run\\(s\\) failed"):
    sweep.sweep(fake_train, "cfg.py", axes, root, facet="optim.lr")
  with open(os.path.join(root, "results.csv")) as f:
    assert [r["status"] for r in csv.DictReader(f)] == ["done", "failed", "done", "failed"]
  rows = sweep.sweep(fake_train, "cfg.py", axes, root, facet="optim.lr")
  by_run = {r["run"]: r for r in rows}
  calm, collapsed = by_run["lr=0.5,name=naive"], by_run["lr=2.0,name=naive"]
  assert (calm["final_accuracy"], calm["best_accuracy"], calm["collapse"]) == (0.5, 0.5, False)
  assert (collapsed["final_accuracy"], collapsed["best_accuracy"], collapsed["collapse"]) == (0.3, 0.6, True)
  assert calm["final_reward"] == 0.25
  assert calm["mean_neg_pos_ratio"] == 2.0  # the step without a positive side (inf) is left out
  assert math.isnan(calm["mean_offpolicy_kl"])  # never logged
  for name in ("results.md", "results.csv", "accuracy.png", "neg_pos_ratio.png"):
    assert os.path.getsize(os.path.join(root, name)) > 0
  with open(os.path.join(root, "results.csv")) as f:
    assert len(list(csv.DictReader(f))) == 4
  launches = {n: open(os.path.join(root, n, "launches")).read() for n in by_run}
  # The first pass finished both naive runs and failed both boom runs; the second skipped the finished ones.
  assert launches == {"lr=0.5,name=naive": "x", "lr=0.5,name=boom": "xx",
                      "lr=2.0,name=naive": "x", "lr=2.0,name=boom": "xx"}
  assert {r["status"] for r in rows} == {"done"}
  sweep.sweep(fake_train, "cfg.py", axes, root, facet="optim.lr")
  assert open(os.path.join(root, "lr=2.0,name=naive", "launches")).read() == "x"
  done = json.load(open(os.path.join(root, "lr=2.0,name=boom", sweep.DONE_NAME)))
  assert done["point"] == {"optim.lr": "2.0", "objective.name": "boom"}
