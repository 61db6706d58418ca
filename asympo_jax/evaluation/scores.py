"""Benchmark evaluation: greedy accuracy, avg@k and unbiased pass@k, their JSON records, and the curves.

A benchmark's results live in `<out_dir>/<benchmark>.json` as one record per (run, step), so evaluating more
checkpoints or more runs into the same directory adds records (a re-evaluated checkpoint replaces its
record), and `<benchmark>.png` plots the accuracies against training step, one line per run.
An answer counts as correct when its reward is 1 (reasoning-gym's partial credit is not correct).
"""
from __future__ import annotations

import json
import math
import os
import textwrap
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from asympo_jax.common.checks import check
from asympo_jax.data.datasets import Problem

# questions, samples per question, greedy? -> `samples` completions per question
Complete = Callable[[Sequence[str], int, bool], list[list[str]]]
# outputs, golds -> rewards [N]
Score = Callable[[Sequence[str], Sequence[Problem]], np.ndarray]


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k of Chen et al. (2021) from n samples with c correct: 1 - C(n-c, k) / C(n, k),
  as the product 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the huge binomials."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def default_ks(n: int) -> list[int]:
  """1, 2, 4, ... up to n, and n itself."""
  return sorted({2**i for i in range(n.bit_length()) if 2**i <= n} | {n}) if n > 0 else []


def summarize(greedy_rewards_P: np.ndarray, sampled_rewards_PxN: np.ndarray | None,
              ks: Sequence[int]) -> dict[str, float]:
  """greedy_accuracy; and with N samples per problem, avg@N (mean accuracy over samples) and pass@k."""
  summary = {"problems": int(len(greedy_rewards_P)),
             "greedy_accuracy": float(np.mean(np.asarray(greedy_rewards_P) >= 1.0))}
  if sampled_rewards_PxN is not None and sampled_rewards_PxN.size:
    correct_PxN = np.asarray(sampled_rewards_PxN) >= 1.0
    n = correct_PxN.shape[1]
    summary[f"avg@{n}"] = float(correct_PxN.mean())
    for k in ks:
      summary[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct_PxN.sum(1)]))
  return summary


def run_benchmark(problems: Sequence[Problem], complete: Complete, score: Score, samples: int,
                  ks: Sequence[int]) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """(summary, per-problem records) of one checkpoint on one benchmark: a greedy completion per problem,
  and `samples` sampled completions per problem when samples > 0."""
  questions = [p.question for p in problems]
  greedy = [row[0] for row in complete(questions, 1, True)]
  greedy_rewards = score(greedy, problems)
  sampled_rewards = None
  if samples > 0:
    sampled = complete(questions, samples, False)
    flat = score([s for row in sampled for s in row], [p for p in problems for _ in range(samples)])
    sampled_rewards = np.asarray(flat).reshape(len(problems), samples)
  records = [{"id": p.id, "answer": p.answer, "greedy": g, "greedy_reward": float(r)}
             for p, g, r in zip(problems, greedy, greedy_rewards)]
  if sampled_rewards is not None:
    for record, row in zip(records, sampled_rewards):
      record["sample_rewards"] = row.tolist()
  return summarize(greedy_rewards, sampled_rewards, ks), records


def update_results(path: str, benchmark: str, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Merges (run, step) records into the benchmark's JSON file; returns all its records, sorted."""
  existing = []
  if os.path.exists(path):
    with open(path) as f:
      existing = json.load(f)["results"]
  keys = {(r["run"], r["step"]) for r in records}
  merged = sorted([r for r in existing if (r["run"], r["step"]) not in keys] + list(records),
                  key=lambda r: (r["run"], r["step"]))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump({"benchmark": benchmark, "results": merged}, f, indent=1)
  os.replace(path + ".tmp", path)  # a crash mid-write never leaves a truncated results file
  return merged


def plotted_metrics(records: Sequence[dict[str, Any]]) -> list[str]:
  """greedy_accuracy, avg@n and the largest pass@k (pass@1 equals avg@n; the other k sit between)."""
  names = {k for r in records for k in r}
  passes = sorted((int(k[5:]) for k in names if k.startswith("pass@")), reverse=True)
  avgs = sorted(k for k in names if k.startswith("avg@"))
  return ["greedy_accuracy"] + avgs + ([f"pass@{passes[0]}"] if passes and passes[0] > 1 else [])


def plot(records: Sequence[dict[str, Any]], benchmark: str, path: str) -> None:
  """The plotted metrics against training step, one panel per metric, one line per run."""
  import matplotlib
  matplotlib.use("Agg")  # headless: files only
  import matplotlib.pyplot as plt

  metrics = plotted_metrics(records)
  runs = sorted({r["run"] for r in records})
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for run in runs:
      points = sorted((r["step"], r[metric]) for r in records if r["run"] == run and metric in r)
      ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=run)
    # Dataset specs can be long (gym options): wrap them to the panel's width instead of cutting them off.
    ax.set_title(textwrap.fill(f"{benchmark}: {metric}", 48), fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("accuracy")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def validate(cfg_eval: ml_collections.ConfigDict) -> None:
  """Checks config.eval."""
  check(cfg_eval.every >= 0, "eval.every", "must be >= 0 (0: off)")
  check(cfg_eval.samples >= 0, "eval.samples", "must be >= 0 (0: greedy only)")
  check(cfg_eval.temperature > 0, "eval.temperature", "must be > 0 (greedy decoding is always reported)")
  check(cfg_eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
