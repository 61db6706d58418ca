"""MetricsWriter: JSONL records, TensorBoard events, resume truncation, silence off process 0."""
import json
import os
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from asympo_jax.train import metrics
from asympo_jax.common.checks import ConfigError
from asympo_jax.run.config import base_config

CFG = base_config().metrics
CFG.tensorboard = False


def test_jsonl_tensorboard_and_resume(tmp_path):
  cfg = base_config().metrics
  w = metrics.MetricsWriter(str(tmp_path), cfg, {"seed": 0}, is_main=True)
  for step in range(4):
    w.write(step, {"loss": step * 0.5, "reward/mean": 1.0})
  w.close()
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path))] == [0, 1, 2, 3]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
  # Resumed after step 1: the records of steps 2 and 3 from before the kill are replaced.
  w = metrics.MetricsWriter(str(tmp_path), cfg, {}, is_main=True, start_step=1)
  w.write(2, {"loss": 9.0})
  w.close()
  records = metrics.read_jsonl(str(tmp_path))
  assert [r["step"] for r in records] == [0, 1, 2]
  assert records[-1]["loss"] == 9.0 and records[1] == {"step": 1, "loss": 0.5, "reward/mean": 1.0}


def _record(step: int) -> dict[str, float]:
  """What every run logs for `step`, resumed or not (the loop is deterministic); record 0 is the first eval."""
  return {"loss": step / 8, "eval/t/greedy_accuracy": step / 16} if step else {"eval/t/greedy_accuracy": 0.0}


def _run(workdir, steps, saves, evaluating, committed, draw, killing):
  """One run of train.loop.train's logging protocol from its newest intact checkpoint, killed where `draw`
  says when `killing`. At a checkpoint step the save starts, then the record is written; the save commits
  in the background at some later point, at the latest when the next save starts or the run closes.
  `committed` maps each committed checkpoint's step to the record it holds."""
  start = draw(st.sampled_from(sorted(committed))) if committed else 0  # older: the newer ones were corrupt
  for step in [s for s in committed if s > start]:
    del committed[step]
  writer = metrics.MetricsWriter(workdir, CFG, {}, is_main=True, start_step=start,
                                 checkpoint_record=committed.get(start))
  pending = None  # (step, its record, the step after whose record the save commits)

  def kill_now():
    return killing and draw(st.booleans())

  def commit():
    nonlocal pending
    committed[pending[0]] = pending[1]
    pending = None

  def write(step, record):
    writer.write(step, record)
    if kill_now():
      if draw(st.booleans()):  # cut short mid-line
        path = os.path.join(workdir, metrics.JSONL_NAME)
        text = open(path).read()
        cut = draw(st.integers(1, len(text) - text.rstrip("\n").rfind("\n") - 1))
        open(path, "w").write(text[:-cut])
      return True
    return False

  try:
    if start == 0 and evaluating and write(0, _record(0)):
      return
    for step in range(start + 1, steps + 1):
      record = _record(step)
      if step in saves:
        if pending:  # a save waits for the one before it
          commit()
          if kill_now():
            return
        pending = (step, record, step + draw(st.integers(-1, 2)))
        if pending[2] < step:
          commit()
          if kill_now():
            return
      if write(step, {**record, "time/checkpoint": 0.25} if step in saves else record):
        return
      if pending and pending[2] <= step:
        commit()
        if kill_now():
          return
    if pending:  # closing waits for the last save
      commit()
  finally:
    writer.close()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), steps=st.integers(1, 6), evaluating=st.booleans(), kills=st.integers(0, 4))
def test_kills_and_reruns_leave_exactly_one_record_per_step(data, steps, evaluating, kills):
  saves = data.draw(st.sets(st.integers(1, steps)), label="checkpoint steps") | {steps}
  committed = {}
  with tempfile.TemporaryDirectory() as workdir:
    for attempt in range(kills + 1):
      _run(workdir, steps, saves, evaluating, committed, data.draw, killing=attempt < kills)
    records = metrics.read_jsonl(workdir)
  assert [r["step"] for r in records] == [0] * evaluating + list(range(1, steps + 1))
  for r in records:
    assert {k: v for k, v in r.items() if k not in ("step", "time/checkpoint")} == _record(r["step"])


def test_a_rerun_after_a_kill_before_the_first_checkpoint_logs_step_0_once(tmp_path):
  for _ in range(2):  # the first run dies after its initial eval and step 1, before any checkpoint
    w = metrics.MetricsWriter(str(tmp_path), CFG, {}, is_main=True)
    w.write(0, {"eval/t/greedy_accuracy": 0.5})
    w.write(1, {"loss": 1.0})
    w.close()
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path))] == [0, 1]


def test_a_resumed_run_writes_its_checkpoints_record_when_the_killed_run_did_not(tmp_path):
  (tmp_path / metrics.JSONL_NAME).write_text("".join(json.dumps({"step": s, "loss": s}) + "\n" for s in (1, 2)))
  w = metrics.MetricsWriter(str(tmp_path), CFG, {}, is_main=True, start_step=3, checkpoint_record={"loss": 3.0})
  w.close()
  w = metrics.MetricsWriter(str(tmp_path), CFG, {}, is_main=True, start_step=3, checkpoint_record={"loss": -1.0})
  w.close()
  assert metrics.read_jsonl(str(tmp_path)) == [{"step": s, "loss": float(s)} for s in (1, 2, 3)]


def test_only_a_cut_last_line_is_dropped(tmp_path):
  lines = ['{"step": 1, "loss": 1.0}\n', '{"step": 2, "lo', '{"step": 3, "loss": 3.0}\n']
  assert metrics.resumed_lines(lines[:2], 2) == lines[:1]
  with pytest.raises(ValueError, match="metrics.jsonl:2: not a JSON record"):
    metrics.resumed_lines([lines[0], lines[1] + "\n", lines[2]], 3)


def test_other_processes_write_nothing(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path / "run"), base_config().metrics, {}, is_main=False)
  w.write(0, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "run").exists()


def test_wandb_is_optional(monkeypatch):
  cfg = base_config().metrics
  metrics.validate(cfg)  # off by default: never imported
  cfg.wandb_project = "p"
  monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ConfigError, match="metrics.wandb_project"):
    metrics.validate(cfg)
