"""The trainer end to end in subprocesses: SIGTERM + resume is exact, and 2 processes equal 1."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import safetensors.numpy
import pytest

from tests.train_fixtures import truncate_data_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(workdir, devices, *args, cache=None):
  env = dict(os.environ)
  if cache:  # compiled programs shared between the runs of one test
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.Popen([sys.executable, "-m", "tests.trainer_runner", str(workdir), str(devices), *args],
                          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]
  return [line.split() for line in out.splitlines() if line.startswith("RESULT")][-1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """A persistent compilation cache shared by this module's runs: later runs skip most compiling."""
  return tmp_path_factory.mktemp("jax_cache")


def _params(workdir):
  with np.load(os.path.join(workdir, "final_params.npz")) as f:
    return {k: f[k] for k in f.files}


def _steps_logged(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return -1
  with open(path) as f:
    return max((json.loads(line)["step"] for line in f if line.strip()), default=-1)


def test_sigterm_then_resume_is_bit_identical(tmp_path, cache):
  s = 3
  args = [f"train.steps={2 * s}", "rollout.staleness=2", "rollout.mode='fixed_lag'", "train.micro_batches=2",
          "checkpoint.every=0", "reward_sleep=0.3"]
  whole = _finish(_start(tmp_path / "whole", 2, *args, cache=cache))
  assert whole[1:] == [str(2 * s), "False"]

  # The interrupted run also checkpoints every 2 steps: taking batches out early must change nothing.
  cut_args = [*args, "checkpoint.every=2"]
  proc = _start(tmp_path / "cut", 2, *cut_args, cache=cache)
  deadline = time.time() + 300
  while _steps_logged(tmp_path / "cut") < s:
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  stopped = _finish(proc)
  assert stopped[2] == "True" and s <= int(stopped[1]) < 2 * s, stopped
  assert stopped[1] in os.listdir(tmp_path / "cut" / "checkpoints")
  # A kill can land after the checkpoint committed and before its step's record was written: drop that record,
  # and the resumed run writes it from the checkpoint.
  jsonl = tmp_path / "cut" / "metrics.jsonl"
  lines = jsonl.read_text().splitlines(keepends=True)
  assert json.loads(lines[-1])["step"] == int(stopped[1])
  jsonl.write_text("".join(lines[:-1]))

  resumed = _finish(_start(tmp_path / "cut", 2, *cut_args, cache=cache))
  assert resumed[1:] == [str(2 * s), "False"]
  want, got = _params(tmp_path / "whole"), _params(tmp_path / "cut")
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  logged = [json.loads(line)["step"] for line in open(tmp_path / "cut" / "metrics.jsonl")]
  assert logged == list(range(1, 2 * s + 1))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, cache):
  args = ["train.steps=3", "rollout.staleness=1", "checkpoint.every=1"]
  whole = _finish(_start(tmp_path, 2, *args, cache=cache))
  assert whole[1:] == ["3", "False"]
  want = _params(tmp_path)
  truncate_data_files(tmp_path / "checkpoints" / "3")

  proc = _start(tmp_path, 2, *args, cache=cache)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-4000:]
  assert "skipped checkpoint" in out and "resuming from step 2" in out
  assert os.listdir(tmp_path / "checkpoints_skipped") == ["3"]  # kept for inspection
  assert "3" in os.listdir(tmp_path / "checkpoints")  # saved again by the resumed run
  got = _params(tmp_path)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
  assert logged == [1, 2, 3]


def _free_port():
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_two_processes_equal_one(tmp_path, cache):
  args = ["train.steps=3", "rollout.staleness=1", "train.micro_batches=2", "mesh.data=-1", "mesh.fsdp=2",
          "export=True"]
  single = _finish(_start(tmp_path / "single", 4, *args, cache=cache))
  port = _free_port()
  procs = [_start(tmp_path / "multi", 2, *args, f"distributed.coordinator='localhost:{port}'",
                  "distributed.num_processes=2", f"distributed.process_id={i}", cache=cache) for i in range(2)]
  results = [_finish(p) for p in procs]
  assert single[1:] == ["3", "False"] and all(r[1:] == ["3", "False"] for r in results)
  want, got = _params(tmp_path / "single"), _params(tmp_path / "multi")
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  single_log = [json.loads(line) for line in open(tmp_path / "single" / "metrics.jsonl")]
  multi_log = [json.loads(line) for line in open(tmp_path / "multi" / "metrics.jsonl")]
  assert [r["step"] for r in multi_log] == [1, 2, 3]  # process 0 alone wrote them
  for a, b in zip(single_log, multi_log):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
    assert a["reward/mean"] == b["reward/mean"]
  # The HF export gathers the params that span both processes; process 0 alone writes the directory.
  want, got = (safetensors.numpy.load_file(tmp_path / run / "hf" / "model.safetensors") for run in ("single", "multi"))
  assert sorted(got) == sorted(want) and len(want) > 10
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert (tmp_path / "multi" / "hf" / "config.json").exists()
  # ...and each process loaded its shards of it back, equal to the trained params.
  assert (tmp_path / "multi" / "reloaded_0").exists() and (tmp_path / "multi" / "reloaded_1").exists()
