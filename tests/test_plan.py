"""The plan (asympo_jax/run/plan.py): its byte counts against independent formulas, its FLOP formula against
XLA's count on a program without loops, and, with libtpu, a TPU topology compiled on this CPU: a small config
fits, an oversized one is reported as not fitting with exit status 1."""
import importlib.util
import os
import subprocess
import sys

import pytest

from asympo_jax.run import plan, targets
from configs import default

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (the tpu extra)")

# The `tiny` architecture (docs/design.md §10), written out here rather than read from the code.
V, D, L, H, K, HD, F = 512, 256, 4, 4, 2, 64, 768


def tiny_config(data=4, fsdp=2):
  cfg = default.get_config()
  cfg.mesh.data, cfg.mesh.fsdp = data, fsdp
  return cfg


@pytest.fixture(scope="module")
def cpu8_plan():
  return plan.plan_for_target(tiny_config(), "cpu:8")


def test_parameter_and_optimizer_bytes_match_an_independent_count(cpu8_plan):
  fsdp = 2
  # Every weight matrix has a hidden (embed) axis, which fsdp splits; norms are whole on every device.
  matrices = V * D + L * (D * H * HD + 2 * D * K * HD + H * HD * D + 3 * D * F)
  norms = (2 * L + 1) * D + 2 * L * HD
  params = 4 * (matrices / fsdp + norms)
  assert cpu8_plan.params_bytes == params
  assert cpu8_plan.generator_params_bytes == params  # the sampler uses the training mesh
  # AdamW's two moments, plus a few scalar counters.
  assert 2 * params <= cpu8_plan.optimizer_bytes <= 2 * params + 64


def test_kv_cache_bytes_match_the_formula(cpu8_plan):
  rows, row_shards = 16 * 8, 4 * 2  # prompts_per_step x group_size, data x fsdp
  # default.py: prompts of at most 16 tokens and 8 new ones; the cache holds whole chunks of 32 slots.
  length = 32
  assert cpu8_plan.kv_cache_bytes == L * 2 * K * HD * length * rows * 4 / row_shards


def test_both_programs_add_up_with_a_second_generator_copy(cpu8_plan):
  p = cpu8_plan
  assert p.shared and p.fits()
  # The learner's thread runs the train step or eval (the training state staying resident), never both.
  learner = max(p.train.total_bytes, p.eval.total_bytes + p.params_bytes + p.optimizer_bytes)
  assert p.both_bytes() == learner + p.rollout.total_bytes + p.generator_params_bytes
  assert p.train.total_bytes >= p.params_bytes + p.optimizer_bytes


def test_eval_generate_is_compiled_at_the_eval_batch_and_absent_when_eval_is_off():
  cpu8 = targets.target("cpu:8")
  outputs = {}
  for batch in (3, 64):  # greedy, one row a prompt; 3 prompts round up to 8, one row per device
    cfg = tiny_config()
    cfg.eval.batch_size, cfg.rollout.max_new_tokens = batch, 512
    p = plan.pieces(cfg, cpu8.devices)
    rollout, gen_params, _ = plan.rollout_program(cfg, p, cpu8.chip)
    outputs[batch] = plan.eval_program(cfg, p, gen_params).output_bytes
  # Its outputs hold each row's 512 tokens and mask (int32): 8 times as many rows, 8 times the bytes.
  assert outputs[3] >= 2 * 512 * 4
  assert outputs[64] == pytest.approx(8 * outputs[3], rel=0.01)
  cfg = tiny_config()
  cfg.eval.every = 0
  p = plan.pieces(cfg, cpu8.devices)
  assert plan.eval_program(cfg, p, plan.rollout_program(cfg, p, cpu8.chip)[1]) is None


def test_flop_formula_matches_xla_on_a_train_step_without_loops():
  """One micro-batch, unrolled layers, direct log-probs: XLA's count then covers the whole step."""
  cfg = tiny_config(data=1, fsdp=1)
  cfg.model.scan_layers, cfg.model.remat = False, "none"
  cfg.train.micro_batches, cfg.train.logprob_chunk = 1, 0
  p = plan.pieces(cfg, targets.target("cpu:1").devices)
  train, _ = plan.train_program(cfg, p, targets.target("cpu:1").chip)
  # XLA also counts the elementwise work (norms, softmax, SiLU, the optimizer) that the formula leaves out.
  assert train.cost.executed_flops <= train.xla_flops <= 1.1 * train.cost.executed_flops


@pytest.mark.slow  # a minute or more of XLA:TPU compiling on a 2-core machine
@needs_libtpu
def test_a_small_config_compiles_for_a_tpu_topology_and_fits():
  p = plan.plan_for_target(tiny_config(data=2, fsdp=2), "tpu:v5e:2x2")
  assert p.devices == 4 and p.chip.hbm_bytes == 16 * 1024**3
  assert p.fits() and p.train.cost.seconds > 0 and 0 < p.rollout.cost.mfu() < 1


@needs_libtpu
def test_an_oversized_tpu_config_is_reported_as_not_fitting_with_a_nonzero_exit_status():
  # One row per v5e chip of 16 + 40,000 tokens: the plain attention's float32 scores alone are
  # 4 heads x 40016^2 x 4 B = 23.9 GiB per chip, more than its 16 GiB.
  cmd = [sys.executable, "-m", "asympo_jax.run.plan", "--config", "configs/micro.py", "--target", "tpu:v5e:2x2",
         "--config.rollout.max_new_tokens=40000", "--config.rollout.decode_segments=1"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 1, out.stderr[-2000:]
  assert "DOES NOT FIT" in out.stdout


def test_train_py_check_refuses_a_run_that_does_not_fit_with_the_plans_numbers():
  import jax
  from asympo_jax.common.checks import ConfigError

  assert plan.device_memory(jax.devices()[0]) is None  # on CPU train.py skips the check: no device limit
  with pytest.raises(ConfigError, match=r"does not fit in device memory(.|\n)*train_step(.|\n)*DOES NOT FIT"):
    plan.check_fits(tiny_config(), jax.devices()[:8], hbm_bytes=1024**2)


@needs_libtpu
@pytest.mark.parametrize("name, chips", [("tpu:v5p:2x2x1", 4), ("tpu:v6e:2x4", 8), ("tpu:v5e:2x4", 8)])
def test_an_8_chip_slice_is_one_host(name, chips):
  devices = targets.target(name).devices
  assert len(devices) == chips and {d.process_index for d in devices} == {0}


def test_the_continuous_engines_kv_cache_is_its_slots_not_its_rows():
  cfg = tiny_config()
  cfg.rollout.engine, cfg.rollout.slots = "continuous", 4
  p = plan.pieces(cfg, targets.target("cpu:8").devices)
  rollout, _, cache = plan.rollout_program(cfg, p, targets.target("cpu:8").chip)
  length = 32  # the prompt bucket (16) + 8 new tokens, in whole chunks of 32 slots
  assert plan._device_bytes((cache.k, cache.v)) == L * 2 * K * HD * length * 4 * 4  # 4 slots on each device
  assert rollout.total_bytes > 0 and rollout.error is None
