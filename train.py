"""Trains a policy with asynchronous RL: `python train.py --config configs/x.py --config.rollout.staleness=4`.

Validates the whole config before anything is built or compiled, then runs (or resumes, when the workdir
holds a checkpoint) asympo_jax/run/pipeline.py: scratch model, warm start, the RL loop of
asympo_jax/train/loop.py, summary. SIGTERM or Ctrl-C saves a checkpoint and stops with exit status
EXIT_STOPPED.
"""
from absl import app, logging
from ml_collections import config_flags

from asympo_jax.run import config as config_lib

# A run stopped by a signal is unfinished: a non-zero status keeps sweep.py from marking it done, so the next
# sweep resumes it from its checkpoint. 75 is sysexits' EX_TEMPFAIL ("try again later").
EXIT_STOPPED = 75

_CONFIG = config_flags.DEFINE_config_file("config", None, "a config file (configs/*.py)", lock_config=True)


def main(argv):
  del argv
  import jax

  from asympo_jax.run import pipeline
  from asympo_jax.run import assemble as run
  from asympo_jax.run import validation
  cfg = _CONFIG.value
  run.initialize_distributed(cfg.distributed)
  validation.validate(cfg, jax.devices())
  pipeline.validate(cfg)
  result = pipeline.run_all(cfg)
  logging.info("%s after %d steps: %s", "stopped" if result.stopped_by_signal else "finished", result.step,
               cfg.workdir)
  if result.stopped_by_signal:
    raise SystemExit(EXIT_STOPPED)


if __name__ == "__main__":
  from absl import flags

  from asympo_jax.common import cpu
  cpu.tune_malloc()
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=config_lib.parse_flags)
