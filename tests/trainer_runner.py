"""A tiny training run in its own process, for the resume and multi-host tests (not a test file).

    python -m tests.trainer_runner WORKDIR DEVICES key=value ...    (from the repo root)

DEVICES is the number of host CPU devices of this process; key=value pairs override the config (dotted keys, Python
literals), except reward_sleep=SECONDS, which slows every batch down (so a test can signal mid-run), and
export=True, which also writes the final params as a Hugging Face directory WORKDIR/hf, loads it back on the mesh
and checks the params (each process then writes WORKDIR/reloaded_<process>). The run uses the real
trainer, generator, sampler and train step, on the tiny decoder with synthetic prompts and a reward that counts low
token ids. At the end it writes WORKDIR/final_params.npz.
"""
import ast
import os
import sys
import time

workdir, devices = sys.argv[1], int(sys.argv[2])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from asympo_jax.model import hf_io  # noqa: E402
from asympo_jax.run import assemble as run
from asympo_jax.common import sharding
from asympo_jax.train import loop as trainer
from asympo_jax.run import validation
from tests.train_fixtures import TINY, tiny_config, tiny_model  # noqa: E402

overrides = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}
reward_sleep = overrides.pop("reward_sleep", 0.0)
export = overrides.pop("export", False)
cfg = tiny_config(**{"workdir": workdir, "metrics.progress_bar": False, "metrics.tensorboard": False,
                     "rollout.max_new_tokens": 6, **overrides})
run.initialize_distributed(cfg.distributed)
validation.validate(cfg, jax.devices())
mesh = sharding.make_mesh(cfg.mesh)
model = tiny_model(mesh)
EOS, PAD = 1, 0


def prompts_for_step(step):
  rng = np.random.default_rng((cfg.seed, step))
  prompts = [rng.integers(2, TINY.vocab_size, rng.integers(1, cfg.rollout.max_prompt_len + 1)).tolist()
             for _ in range(cfg.rollout.prompts_per_step)]
  return prompts, [None] * len(prompts)


def reward_fn(texts, targets):
  time.sleep(reward_sleep)
  return np.asarray([float(np.mean([int(t) < 12 for t in s.split()] or [0]) > 0.5) for s in texts])


sample_mesh = run.sampling_mesh(cfg, mesh)
build = run.rollout_pieces(cfg, model, sample_mesh, prompts_for_step, lambda ids: " ".join(map(str, ids)),
                           reward_fn, [EOS], PAD)
result = trainer.train(cfg, mesh, model, build, transfer=run.make_transfer(sample_mesh))
params = multihost_utils.process_allgather(nnx.to_pure_dict(result.state.params), tiled=True)
if not result.stopped_by_signal and jax.process_index() == 0:
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(os.path.join(workdir, "final_params.npz"), **flat)
if export and not result.stopped_by_signal:
  nnx.update(model, result.state.params)
  hf_io.save_model(model, os.path.join(workdir, "hf"))  # every process gathers; process 0 writes
  multihost_utils.sync_global_devices("exported")
  # Every process reads back its own shards of the export: the multi-host import path.
  back = hf_io.load_model(os.path.join(workdir, "hf"), mesh)
  reloaded = multihost_utils.process_allgather(nnx.to_pure_dict(nnx.state(back, nnx.Param)), tiled=True)
  jax.tree.map(np.testing.assert_array_equal, reloaded, params)
  open(os.path.join(workdir, f"reloaded_{jax.process_index()}"), "w").close()
print("RESULT", result.step, result.stopped_by_signal, flush=True)
