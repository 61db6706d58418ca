"""Paired contrasts between cells of the staleness grid, the numbers the study's claims are judged on.

A contrast compares two cells (lr, objective, staleness) seed by seed: runs of one seed share the warm start
and the sampling keys, so the per-seed difference removes most of what the seeds differ in. Over the seeds both
cells have: the mean difference, its sample std, and the paired t statistic mean / (std / sqrt(n)); with three
seeds, |t| > 4.30 is a two-sided 5% test (t distribution, 2 degrees of freedom).

The contrasts written: each objective's k - 0 for every staleness k > 0 of the grid (what staleness does to it),
and each objective minus the reference objective at every k (how far it sits from, e.g., grpo).
"""
from __future__ import annotations

import csv
import math
import os
import statistics
from typing import Any, Sequence

Cell = tuple[str, str, int]  # (lr, objective, staleness)
# (run column, scale, label)
COLUMNS = (("final_accuracy", 100, "final acc (points)"), ("reward", 1, "reward"),
           ("nll_gap", 1, "NLL gap (neg - pos)"), ("net_loss", 1, "net_loss"), ("offpolicy_kl", 1, "off-policy KL"))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof 1; NaN for fewer than two finite values)."""
  finite = [v for v in values if math.isfinite(v)]
  if not finite:
    return math.nan, math.nan
  return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan


def _cell(run: dict[str, Any]) -> Cell:
  return run["lr"], run["objective"], run["staleness"]


def paired(runs: Sequence[dict[str, Any]], a: Cell, b: Cell, column: str) -> dict[str, float]:
  """Over the seeds that both cells finished with a finite `column`: n, and the mean, sample std and paired t
  of a - b (std and t NaN for fewer than two seeds; t infinite for a nonzero mean without spread)."""
  values = {cell: {r["seed"]: r[column] for r in runs if _cell(r) == cell and math.isfinite(r[column])}
            for cell in (a, b)}
  diffs = [values[a][s] - values[b][s] for s in sorted(values[a].keys() & values[b].keys())]
  n = len(diffs)
  mean, std = mean_std(diffs)
  if n < 2:
    t = math.nan
  elif std > 0:
    t = mean / (std / math.sqrt(n))
  else:
    t = math.copysign(math.inf, mean) if mean else math.nan
  return {"n": n, "mean": mean, "std": std, "t": t}


def contrasts(runs: Sequence[dict[str, Any]], objectives: Sequence[str], reference: str) -> list[dict[str, Any]]:
  """The rows of the contrast table: staleness effects within each objective, then each objective against
  `reference` at each staleness; one column triple (mean, std, t) per COLUMNS entry, and the paired seeds."""
  order = {name: i for i, name in enumerate(objectives)}
  cells = sorted({_cell(r) for r in runs}, key=lambda c: (c[0], order.get(c[1], len(order)), c[1], c[2]))
  pairs = [(f"{o}: k={k} - k=0", (lr, o, k), (lr, o, 0)) for lr, o, k in cells if k > 0 and (lr, o, 0) in cells]
  pairs += [(f"{o} - {reference}: k={k}", (lr, o, k), (lr, reference, k))
            for lr, o, k in sorted(cells, key=lambda c: (c[0], c[2], order.get(c[1], len(order)), c[1]))
            if o != reference and (lr, reference, k) in cells]
  rows = []
  for label, a, b in pairs:
    row: dict[str, Any] = {"lr": a[0], "contrast": label, "seeds": 0}
    for column, _, _ in COLUMNS:
      stats = paired(runs, a, b, column)
      row["seeds"] = max(row["seeds"], stats["n"])
      row.update({f"{column}_{k}": stats[k] for k in ("mean", "std", "t")})
    rows.append(row)
  return rows


def _fmt(mean: float, std: float, t: float, scale: float) -> str:
  if not math.isfinite(mean):
    return "-"
  digits = 1 if scale == 100 else 3
  text = f"{scale * mean:+.{digits}f}"
  if math.isfinite(std):
    text += f" ± {scale * std:.{digits}f}"
  return text + (f" (t {t:+.1f})" if not math.isnan(t) else "")


def write(rows: Sequence[dict[str, Any]], out_dir: str) -> None:
  """contrasts.csv (every number) and contrasts.md ("mean ± std (t)" per column) in `out_dir`."""
  if not rows:
    return
  with open(os.path.join(out_dir, "contrasts.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with_lr = len({r["lr"] for r in rows}) > 1 or rows[0]["lr"] != ""
  head = (["lr"] if with_lr else []) + ["contrast", "seeds"] + [label for _, _, label in COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    line = ([str(r["lr"])] if with_lr else []) + [r["contrast"], str(r["seeds"])]
    line += [_fmt(r[f"{c}_mean"], r[f"{c}_std"], r[f"{c}_t"], scale) for c, scale, _ in COLUMNS]
    lines.append("| " + " | ".join(line) + " |")
  with open(os.path.join(out_dir, "contrasts.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
