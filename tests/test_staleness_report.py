"""The staleness report: per-cell mean and std over seeds of finished runs, over each run's stale steps."""
import csv
import json
import math

import pytest

from asympo_jax.run import grid
from asympo_jax.run import staleness_report as report

ACC = "eval/worked_arithmetic/greedy_accuracy"


def write_run(root, objective, staleness, seed, accuracies, gap, done=True):
  """A run of `len(accuracies) - 1` steps (evals at every step) whose lag climbs to `staleness` as in
  fixed_lag, with nll_gap 100 on the steps before the lag is reached and `gap` after."""
  point = {"seed": str(seed), "objective.name": objective, "rollout.staleness": str(staleness)}
  run = root / grid.run_name(point)
  run.mkdir(parents=True)
  records = [{"step": 0, ACC: accuracies[0]}]
  for step, accuracy in enumerate(accuracies[1:], 1):
    lag = min(step - 1, staleness)
    records.append({"step": step, ACC: accuracy, "rollout/lag_mean": float(lag),
                    "balance/nll_gap": gap if lag >= staleness else 100.0, "grad_norm/pos": 1.0,
                    "offpolicy/kl": 0.01 * lag})
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  if done:
    (run / grid.DONE_NAME).write_text(json.dumps({"point": point}))


def test_cells_are_means_and_sample_stds_over_seeds_of_finished_runs(tmp_path):
  root, out = tmp_path / "runs", tmp_path / "out"
  write_run(root, "naive", 2, 0, [0.4, 0.5, 0.6, 0.2, 0.3], gap=1.0)
  write_run(root, "naive", 2, 1, [0.4, 0.5, 0.6, 0.2, 0.5], gap=3.0)
  write_run(root, "naive", 2, 2, [0.4, 0.9, 0.9, 0.9, 0.9], gap=0.0, done=False)  # still running: left out
  write_run(root, "asympo", 0, 0, [0.4, 0.45, 0.5], gap=0.5)
  rows = report.report(str(root), str(out), ["asympo", "naive"], caption="test")
  assert [(r["objective"], r["staleness"], r["seeds"]) for r in rows] == [("asympo", 0, 1), ("naive", 2, 2)]
  naive = rows[1]
  assert naive["final_accuracy"] == pytest.approx(0.4)
  assert naive["final_accuracy_std"] == pytest.approx(math.sqrt(0.02))  # (0.3, 0.5): ddof 1
  assert naive["best_accuracy"] == pytest.approx(0.6)
  assert naive["nll_gap"] == pytest.approx(2.0)  # only steps 3 and 4 reached lag 2
  assert naive["stale_steps"] == 2
  assert math.isnan(rows[0]["final_accuracy_std"])  # one seed: no spread
  assert rows[0]["nll_gap"] == pytest.approx(0.5)
  with open(out / "table.csv") as f:
    assert [r["objective"] for r in csv.DictReader(f)] == ["asympo", "naive"]
  table = (out / "table.md").read_text()
  assert "| naive | 2 | 2 | 40.0 ± 14.1 | 60.0 ± 0.0 |" in table
  assert table.split("\n")[0].endswith("| off-policy KL |") and "| 0.020 ± 0.000 |" in table  # lag 2 steps only
  for png in ("accuracy.png", "balance.png", "grad_norms.png", "nll_gap_by_lag.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_finished_run_is_an_error(tmp_path):
  write_run(tmp_path, "naive", 0, 0, [0.1, 0.2], gap=0.0, done=False)
  with pytest.raises(ValueError, match="no finished run"):
    report.report(str(tmp_path), str(tmp_path / "out"), ["naive"], caption="")
