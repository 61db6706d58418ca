"""A smoke-test size of configs/worked_arithmetic.py: the same pipeline (worked-solution warm start, its
cache, split gradient norms, behaviour log-probs) in seconds of compute, for the test suite.

    python train.py --config configs/worked_arithmetic_micro.py --config.workdir=/tmp/wa_micro
"""
from configs import worked_arithmetic as study


def get_config():
  c = study.get_config()
  c.workdir = "runs/worked_arithmetic_micro"
  c.data.train = study.TASK + "&size=64&seed=1"
  c.data.eval = study.TASK + "&size=4&seed=2"
  c.warm_start.steps = 2
  c.warm_start.warmup_steps = 0
  c.warm_start.cache_dir = "runs/warm_start_cache_micro"
  c.rollout.prompts_per_step = 2
  c.rollout.group_size = 2
  c.rollout.staleness = 1
  c.train.steps = 2
  c.eval.every = 2
  c.eval.batch_size = 4
  c.checkpoint.every = 0
  c.metrics.tensorboard = False
  return c
