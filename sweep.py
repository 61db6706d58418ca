"""Runs a grid of train.py runs, one directory each, resumably; writes results.md/.csv and curve PNGs.

    python sweep.py --config=configs/default.py --grid=rollout.staleness=0,2,8 \
        --grid=objective.name=naive,gpg,asympo --facet=rollout.staleness --root=runs/staleness_sweep

Any further `--config.KEY=VALUE` flags apply to every run.
"""
import os
import sys

from absl import app, flags

from asympo_jax.run import config as config_lib
from asympo_jax.run import grid as sweep

flags.DEFINE_string("config", None, "config file for every run", required=True)
flags.DEFINE_multi_string("grid", [], "KEY=V1,V2,... (repeat for more axes)")
flags.DEFINE_string("root", None, "directory that holds one run directory per grid point", required=True)
flags.DEFINE_string("out", None, "directory for results.md/.csv and the plots (default: --root)")
flags.DEFINE_string("facet", None, "grid key whose values get one plot panel each")
flags.DEFINE_float("collapse_drop", 0.1, "a drop of final below best eval accuracy that flags a collapse")
FLAGS = flags.FLAGS


def main(argv):
  extra = [a for a in argv[1:] if a.startswith("--config.")]
  unknown = [a for a in argv[1:] if a not in extra]
  if unknown:
    raise app.UsageError(f"unexpected arguments {unknown}")
  axes = [sweep.parse_axis(a) for a in FLAGS.grid]
  config_lib.check_override_keys(config_lib.override_keys(argv) + [key for key, _ in axes])  # before any run
  train_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
  rows = sweep.sweep(train_py, FLAGS.config, axes, FLAGS.root, FLAGS.facet, FLAGS.collapse_drop, extra, FLAGS.out)
  out = FLAGS.out or FLAGS.root
  with open(os.path.join(out, "results.md")) as f:
    sys.stdout.write(f.read())
  print(f"{len(rows)} runs in {FLAGS.root}; table and plots in {out}")


if __name__ == "__main__":
  # --config.KEY=VALUE flags belong to train.py: let them through to main as arguments. (Parse once: a second
  # parse appends every --grid again.)
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
