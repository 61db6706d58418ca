"""Sweeps: a grid over config keys, one run directory per point, resumable, with a summary and curves.

Each point runs `train.py` in its own process (a crash in one run leaves the others alone and every run
starts from a clean JAX state). A point whose directory holds `DONE_NAME` is skipped; an unfinished one is
launched again and train.py resumes it from its last checkpoint. A failed run does not stop the others.

The summary reads each run's metrics.jsonl: final and best eval greedy accuracy (eval/<name>/greedy_accuracy
of the eval set whose name sorts first), final reward, the means over steps of balance/neg_pos_ratio and
offpolicy/kl (when recorded), and stability flags (`collapse`: the final accuracy fell more than
`collapse_drop` below the run's best; `nonfinite`: the run skipped non-finite updates), written as results.md
and results.csv, and plotted as accuracy, reward/mean and balance/neg_pos_ratio against step, one line per
run, one panel per value of the facet key.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from typing import Any, Sequence

from asympo_jax.train.metrics import JSONL_NAME, read_jsonl
from asympo_jax.run.pipeline import accuracy_keys

DONE_NAME = "sweep_done.json"
REWARD = "reward/mean"
RATIO = "balance/neg_pos_ratio"
SKIPPED = "optim/skipped_updates"
KL = "offpolicy/kl"  # logged only when the sampler records behaviour log-probs


def parse_axis(text: str) -> tuple[str, list[str]]:
  """"rollout.staleness=0,2,8" -> ("rollout.staleness", ["0", "2", "8"])."""
  key, sep, values = text.partition("=")
  if not sep or not key or not values:
    raise ValueError(f"grid axis {text!r}: expected KEY=V1,V2,...")
  return key, values.split(",")


def grid(axes: Sequence[tuple[str, list[str]]]) -> list[dict[str, str]]:
  """The cartesian product of the axes, in the order given, as {key: value} points."""
  keys = [k for k, _ in axes]
  repeated = sorted({k for k in keys if keys.count(k) > 1})
  if repeated:
    raise ValueError(f"grid key(s) {repeated} given more than once; list all values of a key in one axis")
  return [dict(zip(keys, values)) for values in itertools.product(*(v for _, v in axes))]


def run_name(point: dict[str, str]) -> str:
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())


def run_point(train_py: str, config: str, point: dict[str, str], workdir: str, extra: Sequence[str] = ()) -> bool:
  """Runs one point to completion (resuming if it has a checkpoint) unless it is marked done; False if it failed."""
  if os.path.exists(os.path.join(workdir, DONE_NAME)):
    return True
  overrides = [f"--config.{k}={v}" for k, v in point.items()]
  cmd = [sys.executable, train_py, f"--config={config}", f"--config.workdir={workdir}", *overrides, *extra]
  if subprocess.run(cmd).returncode != 0:
    return False
  with open(os.path.join(workdir, DONE_NAME), "w") as f:
    json.dump({"point": point, "command": cmd}, f)
  return True


def _last(records: list[dict[str, Any]], key: str) -> float:
  values = [r[key] for r in records if key in r]
  return values[-1] if values else math.nan


def _finite_mean(records: list[dict[str, Any]], key: str) -> float:
  """Mean of a metric over the steps that logged a finite value (neg_pos_ratio is inf without a positive side)."""
  values = [r[key] for r in records if key in r and math.isfinite(r[key])]
  return sum(values) / len(values) if values else math.nan


def _records(workdir: str) -> list[dict[str, Any]]:
  return read_jsonl(workdir) if os.path.exists(os.path.join(workdir, JSONL_NAME)) else []


def summarize_run(records: list[dict[str, Any]], collapse_drop: float) -> dict[str, Any]:
  """One run's table row from its metrics records."""
  key = (accuracy_keys(records) or [None])[0]
  accuracies = [r[key] for r in records if key in r]
  final, best = (accuracies[-1], max(accuracies)) if accuracies else (math.nan, math.nan)
  return {
      "final_accuracy": final,
      "best_accuracy": best,
      "final_reward": _last(records, REWARD),
      "mean_neg_pos_ratio": _finite_mean(records, RATIO),
      "mean_offpolicy_kl": _finite_mean(records, KL),
      "collapse": bool(accuracies) and best - final > collapse_drop,
      "nonfinite": _last(records, SKIPPED) > 0,  # NaN (never logged) compares False
      "steps": records[-1]["step"] if records else 0,
  }


def _fmt(v: Any) -> str:
  return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_table(rows: list[dict[str, Any]], out_dir: str) -> None:
  """results.csv and results.md, one row per run."""
  columns = list(rows[0])
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def plot_curves(runs: dict[str, list[dict[str, Any]]], points: dict[str, dict[str, str]], facet: str | None,
                out_dir: str, caption: str) -> list[str]:
  """accuracy.png, reward.png and neg_pos_ratio.png from each run's metrics records: metric against step, a
  line per run, a panel per facet value."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  facets = sorted({points[n].get(facet, "") for n in runs}, key=_numeric_first) if facet else [""]
  written = []
  accuracy = (accuracy_keys([r for records in runs.values() for r in records]) or ["eval/greedy_accuracy"])[0]
  for key, file in ((accuracy, "accuracy.png"), (REWARD, "reward.png"), (RATIO, "neg_pos_ratio.png")):
    width = 4.5 * len(facets)
    fig, axes = plt.subplots(1, len(facets), figsize=(width, 3.8), squeeze=False, sharey=True, layout="constrained")
    for ax, value in zip(axes[0], facets):
      for name, run_records in runs.items():
        if facet and points[name].get(facet) != value:
          continue
        records = [r for r in run_records if key in r]
        label = run_name({k: v for k, v in points[name].items() if k != facet})
        ax.plot([r["step"] for r in records], [r[key] for r in records], marker=".", label=label or name)
      ax.set_title(f"{facet} = {value}" if facet else key)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(key)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(textwrap.fill(caption, width=int(width * 19)), fontsize=7)  # ~19 characters an inch at 7 pt
    fig.savefig(os.path.join(out_dir, file), dpi=110)
    plt.close(fig)
    written.append(os.path.join(out_dir, file))
  return written


def _numeric_first(v: str) -> tuple[int, float, str]:
  try:
    return (0, float(v), v)
  except ValueError:
    return (1, 0.0, v)


def sweep(train_py: str, config: str, axes: Sequence[tuple[str, list[str]]], root: str, facet: str | None = None,
          collapse_drop: float = 0.1, extra: Sequence[str] = (), out_dir: str | None = None) -> list[dict[str, Any]]:
  """Runs (or resumes) every point of the grid under `root`, then writes the table and the plots in `out_dir`
  (default: `root`; a report keeps its figures apart from the run directories)."""
  out_dir = out_dir or root
  os.makedirs(root, exist_ok=True)
  os.makedirs(out_dir, exist_ok=True)
  points = {run_name(p): p for p in grid(axes)}
  runs = {name: os.path.join(root, name) for name in points}
  # A failed run does not stop the others; the sweep reports it in the table and raises at the end.
  ok = {name: run_point(train_py, config, point, runs[name], extra) for name, point in points.items()}
  records = {name: _records(runs[name]) for name in points}  # each run's metrics.jsonl, read once
  rows = [{"run": name, **points[name], "status": "done" if ok[name] else "failed",
           **summarize_run(records[name], collapse_drop)} for name in points]
  write_table(rows, out_dir)
  command = " ".join(["python sweep.py", f"--config={config}", *(f"--grid={k}={','.join(v)}" for k, v in axes),
                      f"--root={root}", *([f"--facet={facet}"] if facet else []),
                      *([f"--out={out_dir}"] if out_dir != root else []), *extra])
  plot_curves(records, points, facet, out_dir, caption=command)
  failed = [name for name in points if not ok[name]]
  if failed:
    raise RuntimeError(f"{len(failed)} run(s) failed: {failed}; run the sweep again to retry them")
  return rows
