"""A smoke-test size of configs/default.py: the same pipeline in a few seconds of compute (tests, sweeps' tests).

    python train.py --config configs/micro.py --config.workdir=/tmp/micro
"""
from configs import default


def get_config():
  c = default.get_config()
  c.workdir = "runs/micro"
  c.data.train = default.TASK + "&size=64&seed=1"
  c.data.eval = default.TASK + "&size=8&seed=2"
  c.warm_start.steps = 2
  c.warm_start.warmup_steps = 0
  c.rollout.prompts_per_step = 2
  c.rollout.group_size = 2
  c.train.steps = 2
  c.eval.every = 1
  c.eval.batch_size = 8
  c.checkpoint.every = 0
  c.metrics.progress_bar = False
  c.metrics.tensorboard = False
  return c
