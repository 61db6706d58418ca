"""Reward scoring throughput: answers/s of RewardPool on gold solutions and on outputs that need sympy.

    python -m benchmarks.reward_throughput [--workers 2] [--repeats 3]

Prints, for the 1819 gold solutions of gsm8k_test + math500_test (mostly verbatim answers: the string fast
path) and for the same answers rewritten in another form (1,000 / 0.5 / x=3 style, so math-verify's sympy
path runs), the best-of-N wall time and answers per second. Pool start-up is excluded.
"""
import argparse
import time

from asympo_jax.data import datasets as data
from asympo_jax.rollout import rewards


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  problems = data.load("gsm8k_test") + data.load("math500_test")
  workloads = {
      "gold solutions": [p.solution for p in problems],
      "rewritten answers": [f"so the answer is \\boxed{{x = {p.answer}}}" for p in problems],
  }
  with rewards.RewardPool(args.workers, timeout_s=5.0) as pool:
    pool.score(["\\boxed{1}"] * 2 * args.workers, ["1"] * 2 * args.workers)  # wait for the workers to start
    for name, outputs in workloads.items():
      best = float("inf")
      for _ in range(args.repeats):
        start = time.perf_counter()
        got = pool.score(outputs, problems)
        best = min(best, time.perf_counter() - start)
      print(f"{name:18s} {len(outputs)} answers  best {best:6.2f} s  {len(outputs) / best:8.0f} answers/s  "
            f"mean reward {got.mean():.3f}")
    print("outcomes:", dict(pool.counters))


if __name__ == "__main__":
  main()
