"""The staleness study's report: per (objective, staleness) cell, mean +/- std over seeds, as a table and plots.

    python -m asympo_jax.run.staleness_report --root=runs/staleness_study --out=docs/staleness_study

Reads the run directories of a `sweep.py` grid over objective.name x rollout.staleness x seed (run names as
sweep.py writes them: `seed=0,name=asympo,staleness=4`); only runs marked done by the sweep count, so a grid
still running reports the cells it has, each with its number of seeds. Writes in --out:

  table.md, table.csv      one row per cell: seeds done, final and best greedy accuracy, the balance
                           diagnostics and per-side gradient norms, response lengths, the learner-sampler KL
                           (mean +/- std over seeds)
  accuracy.png             final greedy accuracy against staleness, one line per objective, std error bars
  balance.png              pos_loss, neg_loss, net_loss and the neg - pos NLL gap against staleness
  grad_norms.png           grad_norm/pos and grad_norm/neg against staleness
  nll_gap_by_lag.png       the NLL gap against each batch's own lag (rollout/lag_mean), pooled over seeds
  contrasts.md, .csv       paired per-seed differences between cells, with their t statistics
                           (`staleness_contrasts`): each objective's k - 0, and each objective - --reference

A run's per-step diagnostics are averaged over the grid's common late window: the steps from the first one at
which the runs of the largest staleness k_max train on batches k_max updates old (step k_max + 1 in
fixed_lag mode). There every run trains at its full lag, and every cell is measured over the same steps of
training: the policy drifts even at k = 0, so cells averaged over different steps would differ for that
reason alone, and the first k batches of a run of staleness k, all from the initial policy, would dilute k.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Sequence

from absl import app, flags

from asympo_jax.run import grid, staleness_contrasts
from asympo_jax.run.staleness_contrasts import mean_std
from asympo_jax.run.pipeline import accuracy_keys
from asympo_jax.train.metrics import JSONL_NAME, read_jsonl

LAG = "rollout/lag_mean"
# (column, metric key): per-step metrics averaged over the common late window
STEP_METRICS: tuple[tuple[str, str], ...] = (
    ("reward", "reward/mean"),
    ("pos_loss", "balance/pos_loss"),
    ("neg_loss", "balance/neg_loss"),
    ("net_loss", "balance/net_loss"),
    ("neg_pos_ratio", "balance/neg_pos_ratio"),
    ("pos_nll", "balance/pos_nll"),
    ("neg_nll", "balance/neg_nll"),
    ("nll_gap", "balance/nll_gap"),
    ("grad_norm_pos", "grad_norm/pos"),
    ("grad_norm_neg", "grad_norm/neg"),
    ("len_right", "response/length_right_mean"),
    ("len_wrong", "response/length_wrong_mean"),
    ("offpolicy_kl", "offpolicy/kl"),
)
AXES = ("objective.name", "rollout.staleness", "seed")


def _mean(values: Sequence[float]) -> float:
  finite = [v for v in values if math.isfinite(v)]
  return sum(finite) / len(finite) if finite else math.nan


def window_start(runs: Sequence[dict[str, Any]]) -> float:
  """The first step of the common late window: the step at which the runs of the largest staleness first
  train at that lag (the latest such step over those runs; inf if one never does)."""
  k_max = max(r["staleness"] for r in runs)
  return max(min((rec["step"] for rec in r["records"] if rec.get(LAG, -1) >= k_max), default=math.inf)
             for r in runs if r["staleness"] == k_max)


def run_row(records: list[dict[str, Any]], first_step: float) -> dict[str, float]:
  """One run's numbers: start, final and best eval greedy accuracy, and each STEP_METRICS mean over its
  training steps from `first_step` on."""
  key = (accuracy_keys(records) or [None])[0]
  accuracies = [r[key] for r in records if key in r]
  window = [r for r in records if LAG in r and r["step"] >= first_step]
  row = {"start_accuracy": accuracies[0] if accuracies else math.nan,
         "final_accuracy": accuracies[-1] if accuracies else math.nan,
         "best_accuracy": max(accuracies) if accuracies else math.nan,
         "window_steps": float(len(window))}
  for column, metric in STEP_METRICS:
    row[column] = _mean([r[metric] for r in window if metric in r])
  return row


def load_runs(root: str) -> list[dict[str, Any]]:
  """The finished runs under `root`: their grid point (from the sweep's done marker) and run_row over the
  common late window."""
  runs = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    done = os.path.join(root, name, grid.DONE_NAME)
    if not os.path.isfile(done) or not os.path.isfile(os.path.join(root, name, JSONL_NAME)):
      continue
    with open(done) as f:
      point = json.load(f)["point"]
    if not set(AXES) <= set(point):
      continue
    runs.append({"objective": point["objective.name"], "staleness": int(point["rollout.staleness"]),
                 "seed": int(point["seed"]), "lr": point.get("optim.lr", ""),
                 "records": read_jsonl(os.path.join(root, name))})
  first_step = window_start(runs) if runs else math.inf
  return [{**run, **run_row(run["records"], first_step)} for run in runs]


def cells(runs: list[dict[str, Any]], objectives: Sequence[str]) -> list[dict[str, Any]]:
  """One row per (lr, objective, staleness) with runs: mean and std over seeds of every run_row column."""
  columns = [c for c in runs[0] if c not in ("objective", "staleness", "seed", "lr", "records")] if runs else []
  order = {name: i for i, name in enumerate(objectives)}
  keys = sorted({(r["lr"], r["objective"], r["staleness"]) for r in runs},
                key=lambda k: (k[0], order.get(k[1], len(order)), k[1], k[2]))
  out = []
  for lr, objective, staleness in keys:
    group = [r for r in runs if (r["lr"], r["objective"], r["staleness"]) == (lr, objective, staleness)]
    row = {"lr": lr, "objective": objective, "staleness": staleness, "seeds": len(group)}
    for column in columns:
      row[column], row[column + "_std"] = mean_std([r[column] for r in group])
    out.append(row)
  return out


TABLE_COLUMNS = (("final_accuracy", 100, "final acc %"), ("best_accuracy", 100, "best acc %"),
                 ("reward", 1, "reward"), ("pos_loss", 1, "pos_loss"), ("neg_loss", 1, "neg_loss"),
                 ("net_loss", 1, "net_loss"), ("nll_gap", 1, "NLL gap (neg - pos)"),
                 ("grad_norm_pos", 1, "grad norm +"), ("grad_norm_neg", 1, "grad norm -"),
                 ("len_right", 1, "len right"), ("len_wrong", 1, "len wrong"),
                 ("offpolicy_kl", 1, "off-policy KL"))  # how far k updates moved the learner from the sampler


def _pm(mean: float, std: float, scale: float) -> str:
  if not math.isfinite(mean):
    return "-"
  digits = 1 if scale == 100 or abs(mean) >= 10 else 3
  text = f"{scale * mean:.{digits}f}"
  return text + (f" ± {scale * std:.{digits}f}" if math.isfinite(std) else "")


def write_table(rows: list[dict[str, Any]], out_dir: str) -> None:
  with open(os.path.join(out_dir, "table.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with_lr = len({r["lr"] for r in rows}) > 1 or rows[0]["lr"] != ""
  head = (["lr"] if with_lr else []) + ["objective", "k", "seeds"] + [label for _, _, label in TABLE_COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells_ = ([str(r["lr"])] if with_lr else []) + [r["objective"], str(r["staleness"]), str(r["seeds"])]
    cells_ += [_pm(r[c], r[c + "_std"], scale) for c, scale, _ in TABLE_COLUMNS]
    lines.append("| " + " | ".join(cells_) + " |")
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def _panels(rows: list[dict[str, Any]], panels: Sequence[tuple[str, str]], path: str, caption: str) -> None:
  """One panel per (column, title): the cell means against staleness, a line per (lr, objective), std bars."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, layout="constrained")
  lines = list(dict.fromkeys((r["lr"], r["objective"]) for r in rows))  # rows come in the report's order
  for ax, (column, title) in zip(axes[0], panels):
    for lr, objective in lines:
      line = [r for r in rows if (r["lr"], r["objective"]) == (lr, objective)]
      label = objective + (f" lr {lr}" if lr else "")
      ax.errorbar([r["staleness"] for r in line], [r[column] for r in line],
                  yerr=[0 if not math.isfinite(r[column + "_std"]) else r[column + "_std"] for r in line],
                  marker="o", capsize=3, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("staleness k")
    ax.set_xticks(sorted({r["staleness"] for r in rows}))
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7)
  fig.suptitle(caption, fontsize=7)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_gap_by_lag(runs: list[dict[str, Any]], path: str, caption: str) -> None:
  """balance/nll_gap against each step's batch lag, mean over the steps of that lag and every seed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
  for objective in dict.fromkeys(r["objective"] for r in runs):
    by_lag: dict[float, list[float]] = {}
    for run in (r for r in runs if r["objective"] == objective):
      for record in run["records"]:
        if LAG in record and math.isfinite(record.get("balance/nll_gap", math.nan)):
          by_lag.setdefault(record[LAG], []).append(record["balance/nll_gap"])
    lags = sorted(by_lag)
    ax.plot(lags, [_mean(by_lag[lag]) for lag in lags], marker=".", label=objective)
  ax.set_xlabel("batch lag (updates between sampling and training)")
  ax.set_ylabel("neg NLL - pos NLL (current policy)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.suptitle(caption, fontsize=7)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(root: str, out_dir: str, objectives: Sequence[str], caption: str, reference: str = "grpo"
           ) -> list[dict[str, Any]]:
  """Writes the table, contrasts and plots of the finished runs under `root` into `out_dir`; returns the cell
  rows."""
  runs = load_runs(root)
  if not runs:
    raise ValueError(f"no finished run of an objective.name x rollout.staleness x seed grid under {root}")
  os.makedirs(out_dir, exist_ok=True)
  rows = cells(runs, objectives)
  write_table(rows, out_dir)
  staleness_contrasts.write(staleness_contrasts.contrasts(runs, objectives, reference), out_dir)
  _panels(rows, [("final_accuracy", "final greedy accuracy"), ("best_accuracy", "best greedy accuracy")],
          os.path.join(out_dir, "accuracy.png"), caption)
  _panels(rows, [("pos_loss", "balance/pos_loss"), ("neg_loss", "balance/neg_loss"),
                 ("net_loss", "balance/net_loss"), ("nll_gap", "neg NLL - pos NLL")],
          os.path.join(out_dir, "balance.png"), caption)
  _panels(rows, [("grad_norm_pos", "grad_norm/pos"), ("grad_norm_neg", "grad_norm/neg")],
          os.path.join(out_dir, "grad_norms.png"), caption)
  plot_gap_by_lag(runs, os.path.join(out_dir, "nll_gap_by_lag.png"), caption)
  return rows


flags.DEFINE_string("root", None, "the sweep's --root", required=True)
flags.DEFINE_string("out", None, "directory for table.md/.csv and the plots (default: --root)")
flags.DEFINE_list("objectives", ["naive", "gpg", "spo", "asympo", "grpo"], "row and legend order")
flags.DEFINE_string("caption", "", "a line on every figure (machine, commit)")
flags.DEFINE_string("reference", "grpo", "the objective every other one is contrasted with at each staleness")


def main(argv: list[str]) -> None:
  del argv
  rows = report(flags.FLAGS.root, flags.FLAGS.out or flags.FLAGS.root, flags.FLAGS.objectives, flags.FLAGS.caption,
                flags.FLAGS.reference)
  done = sum(r["seeds"] for r in rows)
  with open(os.path.join(flags.FLAGS.out or flags.FLAGS.root, "table.md")) as f:
    print(f.read())
  print(f"{done} finished runs in {len(rows)} cells")


if __name__ == "__main__":
  app.run(main)
