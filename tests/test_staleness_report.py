"""The staleness report: per-cell mean and std over seeds of finished runs, over each run's stale steps."""
import csv
import json
import math

import pytest

from asympo_jax.run import grid
from asympo_jax.run import staleness_contrasts as contrasts
from asympo_jax.run import staleness_report as report

ACC = "eval/worked_arithmetic/greedy_accuracy"


def write_run(root, objective, staleness, seed, accuracies, gap, done=True):
  """A run of `len(accuracies) - 1` steps (evals at every step) whose lag climbs to `staleness` as in
  fixed_lag, with nll_gap 100 on the steps before the lag is reached and `gap` after, and reward = step."""
  point = {"seed": str(seed), "objective.name": objective, "rollout.staleness": str(staleness)}
  run = root / grid.run_name(point)
  run.mkdir(parents=True)
  records = [{"step": 0, ACC: accuracies[0]}]
  for step, accuracy in enumerate(accuracies[1:], 1):
    lag = min(step - 1, staleness)
    records.append({"step": step, ACC: accuracy, "rollout/lag_mean": float(lag),
                    "balance/nll_gap": gap if lag >= staleness else 100.0, "grad_norm/pos": 1.0,
                    "reward/mean": float(step),
                    "offpolicy/kl": 0.01 * lag})
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  if done:
    (run / grid.DONE_NAME).write_text(json.dumps({"point": point}))


def test_cells_are_means_and_sample_stds_over_seeds_of_finished_runs(tmp_path):
  root, out = tmp_path / "runs", tmp_path / "out"
  write_run(root, "naive", 2, 0, [0.4, 0.5, 0.6, 0.2, 0.3], gap=1.0)
  write_run(root, "naive", 2, 1, [0.4, 0.5, 0.6, 0.2, 0.5], gap=3.0)
  write_run(root, "naive", 2, 2, [0.4, 0.9, 0.9, 0.9, 0.9], gap=0.0, done=False)  # still running: left out
  write_run(root, "asympo", 0, 0, [0.4, 0.45, 0.5, 0.5, 0.5], gap=0.5)
  rows = report.report(str(root), str(out), ["asympo", "naive"], caption="test")
  assert [(r["objective"], r["staleness"], r["seeds"]) for r in rows] == [("asympo", 0, 1), ("naive", 2, 2)]
  naive = rows[1]
  assert naive["final_accuracy"] == pytest.approx(0.4)
  assert naive["final_accuracy_std"] == pytest.approx(math.sqrt(0.02))  # (0.3, 0.5): ddof 1
  assert naive["best_accuracy"] == pytest.approx(0.6)
  assert naive["nll_gap"] == pytest.approx(2.0)  # only steps 3 and 4 reached lag 2
  assert naive["window_steps"] == 2
  assert math.isnan(rows[0]["final_accuracy_std"])  # one seed: no spread
  assert rows[0]["nll_gap"] == pytest.approx(0.5)
  # k = 0 is measured over the same late steps as k = 2 (3 and 4), not over all of its steps
  assert rows[0]["reward"] == pytest.approx(3.5) and rows[0]["window_steps"] == 2
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


def contrast_run(objective, staleness, seed, final_accuracy, reward=0.0):
  columns = {c: 0.0 for c, _, _ in contrasts.COLUMNS}
  return {"lr": "", "objective": objective, "staleness": staleness, "seed": seed,
          **columns, "final_accuracy": final_accuracy, "reward": reward}


def test_contrasts_are_per_seed_differences_with_their_paired_t():
  runs = [contrast_run("naive", 0, s, a) for s, a in enumerate([0.0, 0.0, 0.3])]
  runs += [contrast_run("naive", 4, s, a) for s, a in enumerate([0.1, 0.2, 0.6, 0.9])]  # seed 3: no k=0 pair
  stats = contrasts.paired(runs, ("", "naive", 4), ("", "naive", 0), "final_accuracy")
  # differences 0.1, 0.2, 0.3: mean 0.2, std 0.1, t = 0.2 / (0.1 / sqrt 3)
  assert stats["n"] == 3
  assert (stats["mean"], stats["std"], stats["t"]) == pytest.approx((0.2, 0.1, 2 * math.sqrt(3)))
  swapped = contrasts.paired(runs, ("", "naive", 0), ("", "naive", 4), "final_accuracy")
  assert (swapped["mean"], swapped["std"], swapped["t"]) == pytest.approx((-0.2, 0.1, -2 * math.sqrt(3)))
  # a difference of the same size for every seed: no spread, so t is infinite with the difference's sign
  runs = [contrast_run("grpo", k, s, a - k / 32) for k in (0, 4) for s, a in enumerate([0.5, 0.25, 0.75])]
  assert contrasts.paired(runs, ("", "grpo", 4), ("", "grpo", 0), "final_accuracy")["t"] == -math.inf


def test_contrast_rows_cover_each_objectives_staleness_and_the_reference(tmp_path):
  runs = [contrast_run(o, k, s, s / 8 + k / 64, reward=0.5)  # exact in binary: no rounding spread
          for o in ("grpo", "asympo") for k in (0, 16) for s in range(3)]
  rows = contrasts.contrasts(runs, ["asympo", "grpo"], reference="grpo")
  assert [r["contrast"] for r in rows] == ["asympo: k=16 - k=0", "grpo: k=16 - k=0", "asympo - grpo: k=0",
                                           "asympo - grpo: k=16"]
  assert rows[0]["seeds"] == 3 and rows[0]["final_accuracy_mean"] == 0.25
  assert rows[0]["reward_mean"] == 0.0 and math.isnan(rows[0]["reward_t"])  # no difference at all
  contrasts.write(rows, str(tmp_path))
  table = (tmp_path / "contrasts.md").read_text()
  assert "| asympo: k=16 - k=0 | 3 | +25.0 ± 0.0 (t +inf) | +0.000 ± 0.000 |" in table
