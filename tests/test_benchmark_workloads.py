"""The benchmarks' shared helpers: alternating rounds of ours and the reference, and run counts."""
import argparse

import pytest

from benchmarks import workloads


def test_alternate_interleaves_the_sides_and_keeps_each_best():
  calls = []
  ours_times = iter([{"a": 0.5, "b": 0.2}, {"a": 0.3, "b": 0.4}, {"a": 0.4, "b": 0.1}])
  refs = iter([{"seconds": 0.9, "matmul_peak_flops": 1.0, "malloc": "a"},
               {"seconds": 0.7, "matmul_peak_flops": 2.0, "malloc": "b"},
               {"seconds": 0.8, "matmul_peak_flops": 3.0, "malloc": "c"}])

  def ours():
    calls.append("ours")
    return next(ours_times)

  def reference():
    calls.append("ref")
    return next(refs)

  best_ours, best_ref = workloads.alternate(ours, reference, 3, "t")
  assert calls == ["ours", "ref"] * 3
  assert best_ours == {"a": 0.3, "b": 0.1}  # each layout's own best
  # the fastest reference run, with the highest peak any of its runs measured
  assert (best_ref["seconds"], best_ref["malloc"], best_ref["matmul_peak_flops"]) == (0.7, "b", 3.0)


@pytest.mark.parametrize("text", ["0", "-2"])
def test_run_counts_must_be_positive(text):
  with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
    workloads.positive_int(text)
  assert workloads.positive_int("2") == 2
