"""One evaluation of a policy on a config's eval sets (config.data.eval): what eval.py runs for each checkpoint
and the trainer every config.eval.every steps.

Each set's summary (greedy accuracy, and with eval.samples > 0 avg@k and pass@k) is returned by the set's
short name (data.spec_name), which names the trainer's metrics `eval/<name>/<key>`. Where results are kept,
each set's record joins `<out_dir>/<name>.json` (one record per run and step), its curve is redrawn in
`<name>.png`, and eval.py also keeps every problem's outputs in `<out_dir>/samples/<name>/<run>_<step>.jsonl`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import ml_collections
from absl import logging

from asympo_jax.data import datasets as data
from asympo_jax.evaluation import scores


@dataclasses.dataclass(frozen=True)
class EvalSet:
  name: str  # data.spec_name(spec)
  spec: str
  problems: list[data.Problem]


def load_sets(cfg: ml_collections.ConfigDict) -> list[EvalSet]:
  """The eval sets of config.data.eval, each cut to its first config.data.max_eval_problems problems."""
  return [EvalSet(data.spec_name(spec), spec, data.load(spec, cfg.data.dir, cfg.data.hub, cfg.data.max_eval_problems))
          for spec in data.split_specs(cfg.data.eval)]


def results_dir(cfg: ml_collections.ConfigDict) -> str:
  """config.eval.out_dir, else <workdir>/eval."""
  return cfg.eval.out_dir or os.path.join(cfg.workdir, "eval")


def evaluate(sets: Sequence[EvalSet], complete: scores.Complete, score: scores.Score, samples: int, *, run: str,
             step: int, out_dir: str | None = None, details: Callable[[], Mapping[str, Any]] = dict,
             keep_outputs: bool = False) -> dict[str, dict[str, float]]:
  """Each set's summary, by name (see the module docstring).

  With `out_dir` (one process only: the files are shared), each set's record {run, step, **details(),
  **summary} is merged into its results JSON and logged; `details()` is called once per set, after its
  completions. `keep_outputs` also writes every problem's outputs.
  """
  summaries = {}
  for eval_set in sets:
    summary, per_problem = scores.run_benchmark(eval_set.problems, complete, score, samples,
                                                scores.default_ks(samples))
    summaries[eval_set.name] = summary
    if out_dir is None:
      continue
    record = {"run": run, "step": step, **details(), **summary}
    records = scores.update_results(os.path.join(out_dir, f"{eval_set.name}.json"), eval_set.spec, [record])
    scores.plot(records, eval_set.spec, os.path.join(out_dir, f"{eval_set.name}.png"))
    if keep_outputs:
      samples_dir = os.path.join(out_dir, "samples", eval_set.name)
      os.makedirs(samples_dir, exist_ok=True)
      with open(os.path.join(samples_dir, f"{run}_{step}.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in per_problem)
    logging.info("%s step %d on %s: %s", run, step, eval_set.name,
                 {k: v for k, v in record.items() if k not in ("run", "step")})
  return summaries
