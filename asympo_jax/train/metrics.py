"""Where a run's scalars go: JSONL (always), TensorBoard, optional W&B, and the tqdm progress bar.

Only process 0 writes; every other process gets a writer that drops everything, so callers never branch
on the process index. W&B is imported only when `metrics.wandb_project` is set.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
from typing import Any, Mapping

import ml_collections
import tqdm

from asympo_jax.common.checks import check

JSONL_NAME = "metrics.jsonl"


def validate(cfg_metrics: ml_collections.ConfigDict) -> None:
  check(not cfg_metrics.wandb_project or importlib.util.find_spec("wandb") is not None,
        "metrics.wandb_project",
        "is set but the wandb package is not installed (pip install -e \".[wandb]\", or set \"\")")


def read_jsonl(workdir: str) -> list[dict[str, Any]]:
  """The records of a run's metrics.jsonl, in order."""
  with open(os.path.join(workdir, JSONL_NAME)) as f:
    return [json.loads(line) for line in f if line.strip()]


def resumed_lines(lines: list[str], start_step: int, source: str = JSONL_NAME) -> list[str]:
  """The lines of a metrics.jsonl that a run starting after `start_step` completed steps keeps.

  A fresh start (start_step 0) keeps none: a run killed before its first checkpoint logs everything again.
  A resumed run keeps the records of the steps up to its checkpoint's; those after it come from the killed
  run and are logged again. A last line cut short by a kill mid-write is dropped.
  """
  if start_step == 0:
    return []
  kept = []
  for number, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      step = json.loads(line)["step"]
    except json.JSONDecodeError as e:
      if number == len(lines) - 1 and not line.endswith("\n"):
        break  # a kill mid-write
      raise ValueError(f"{source}:{number + 1}: not a JSON record ({e}); only a cut last line is dropped") from e
    if step <= start_step:
      kept.append(line if line.endswith("\n") else line + "\n")
  return kept


class MetricsWriter:
  """Writes one record per step.

  `start_step` > 0 resumes a run from the checkpoint of that step: the JSONL keeps the records up to it
  (`resumed_lines`). `checkpoint_record` is the record of step start_step as the checkpoint holds it; it is
  logged when the killed run died before writing it (the save starts before the record is written). A
  fresh start (start_step 0) starts the JSONL afresh.
  """

  def __init__(self, workdir: str, cfg_metrics: ml_collections.ConfigDict, config: Mapping[str, Any],
               is_main: bool, start_step: int = 0, checkpoint_record: Mapping[str, float] | None = None):
    self._on = is_main
    self._tb = self._wandb = self._jsonl = None
    if not self._on:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, JSONL_NAME)
    lines = []
    if os.path.exists(path):
      with open(path) as f:
        lines = resumed_lines(f.readlines(), start_step, path)
    with open(path + ".tmp", "w") as f:
      f.writelines(lines)
    os.replace(path + ".tmp", path)  # a kill now leaves the old file or the new one, never a cut one
    missing = start_step > 0 and checkpoint_record is not None and not any(
        json.loads(line)["step"] == start_step for line in lines)
    self._jsonl = open(path, "a")
    if cfg_metrics.tensorboard:
      import tensorboardX
      # TensorBoard hides the events from the first step this run writes on, which the killed run wrote too.
      purge = start_step if start_step == 0 or missing else start_step + 1
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"), purge_step=purge)
    if cfg_metrics.wandb_project:
      import wandb
      self._wandb = wandb.init(project=cfg_metrics.wandb_project, config=dict(config), dir=workdir,
                               name=os.path.basename(os.path.abspath(workdir)), resume="allow")
    if missing:
      self.write(start_step, checkpoint_record)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._on:
      return
    values = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(values, step=step)

  def close(self) -> None:
    for sink in (self._jsonl, self._tb):
      if sink is not None:
        sink.close()
    if self._wandb is not None:
      self._wandb.finish()
    self._jsonl = self._tb = self._wandb = None


class ProgressBar:
  """A tqdm bar over the train steps showing reward, step time and rollout lag (process 0 only)."""

  def __init__(self, start: int, total: int, enabled: bool):
    self._bar = tqdm.tqdm(initial=start, total=total, dynamic_ncols=True, disable=not enabled, unit="step")

  def update(self, scalars: Mapping[str, float]) -> None:
    shown = {"reward": "reward/mean", "step_s": "time/step", "lag": "rollout/lag_mean"}
    self._bar.set_postfix({k: f"{float(scalars[m]):.3g}" for k, m in shown.items() if m in scalars},
                          refresh=False)
    self._bar.update(1)

  def close(self) -> None:
    self._bar.close()
