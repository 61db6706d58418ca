"""train.py as users run it: bad configs stop before anything is built; a tiny run end to end (slow)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = '''
from asympo_jax.run.config import base_config

def get_config():
  c = base_config()
  c.rollout.prompts_per_step, c.rollout.group_size = 2, 4
  c.model.scratch = "tiny"
  c.workdir = {workdir!r}
  {extra}
  return c
'''


def _train(tmp_path, *flags, extra="", timeout=120):
  config = tmp_path / "config.py"
  config.write_text(CONFIG.format(workdir=str(tmp_path / "run"), extra=extra))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), f"--config={config}", *flags], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flags,extra,key", [
    (["--config.rollout.staleness=-1"], "", "config.rollout.staleness"),
    ([], "c.rollout.stalenes = 2", "config.rollout.stalenes"),
    (["--config.mesh.data=3"], "", "config.mesh.data"),
])
def test_bad_config_stops_before_anything_is_built(tmp_path, flags, extra, key):
  out = _train(tmp_path, *flags, extra=extra)
  assert out.returncode != 0
  assert "ConfigError" in out.stderr and key in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "run").exists()  # no checkpoint, metrics or model was created


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
  from asympo_jax.model import scratch
  model_dir = tmp_path / "model"
  scratch.build(str(model_dir), "tiny", ["What is 3 + 4? The answer is \\boxed{7}."] * 50, seed=0)
  extra = "\n  ".join([
      f"c.model.hf_path = {str(model_dir)!r}", "c.model.scratch = ''", "c.data.train = 'gym:basic_arithmetic?size=50&seed=1'",
      "c.data.eval = 'gym:basic_arithmetic?size=4&seed=2'", "c.eval.every = 2", "c.eval.batch_size = 4",
      "c.rollout.max_prompt_len = 64", "c.rollout.max_new_tokens = 8", "c.train.steps = 2",
      "c.rollout.staleness = 1", "c.metrics.progress_bar = False"])
  out = _train(tmp_path, extra=extra, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in records] == [0, 1, 2]
  for record in (records[0], records[2]):  # the initial params and the end: eval/<the gym task>/...
    assert 0.0 <= record["eval/basic_arithmetic/greedy_accuracy"] <= 1.0
  assert {"loss", "reward/mean", "rollout/lag_mean", "optim/grad_norm", "balance/neg_pos_ratio"} <= set(records[1])
  assert os.listdir(tmp_path / "run" / "checkpoints") == ["2"]
  assert sorted(os.listdir(tmp_path / "run" / "eval")) == ["basic_arithmetic.json", "basic_arithmetic.png"]


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_exits_unfinished_and_resumes(tmp_path):
  # A zero status would let sweep.py mark the stopped run done and never finish it.
  import signal
  import time
  workdir = tmp_path / "run"
  cmd = [sys.executable, os.path.join(REPO, "train.py"), f"--config={REPO}/configs/micro.py",
         f"--config.workdir={workdir}", "--config.train.steps=40", "--config.eval.every=0"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  jsonl, deadline = workdir / "metrics.jsonl", time.time() + 600
  while not (jsonl.exists() and jsonl.read_text().count("\n") >= 1):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-3000:]
  stopped = [json.loads(line)["step"] for line in open(jsonl)]
  assert stopped[-1] < 40 and str(stopped[-1]) in os.listdir(workdir / "checkpoints")
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert [json.loads(line)["step"] for line in open(jsonl)] == list(range(1, 41))
