"""tune_malloc(): a re-executed entry point keeps its command line, and afterwards a large block that a worker
thread frees (as XLA:CPU frees its temporaries after every step) is reused without page faults."""
import json
import os
import subprocess
import sys

import pytest

from asympo_jax.common import cpu

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# After the call a worker thread mallocs, touches and frees 300 MB three times, counting the minor page faults
# of each round; then the process reports its tunables and command line.
_CHILD = """
import ctypes, json, os, resource, sys, threading
from asympo_jax.common import cpu
cpu.tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 300 * 2**20, []
def rounds():
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(json.dumps([os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], faults]))
"""
# The settings tune_malloc() adds (see common/cpu.py for why each).
WANTED = {"glibc.malloc.hugetlb=1", "glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=4611686018427387904",
          "glibc.malloc.arena_max=1"}
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables: Linux only")


def _run(tunables: str | None) -> tuple[str | None, list[str], list[int]]:
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  done = subprocess.run([sys.executable, "-c", _CHILD, "--flag", "x y"], cwd=_ROOT, env=env, capture_output=True,
                        text=True, check=True)
  return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


@linux_only
def test_reexecution_keeps_the_command_line_and_freed_blocks_are_reused_without_faults():
  tunables, argv, faults = _run(None)
  assert argv == ["--flag", "x y"]
  assert set(tunables.split(":")) == WANTED
  # 300 MB is at least 150 huge or 76,800 small pages: the first round faults it in, the next two reuse it.
  assert faults[0] >= 100
  assert faults[1] < 10 and faults[2] < 10


@linux_only
def test_without_the_tunables_every_round_faults_again():
  # The property the tuning exists for, checked the other way round: glibc's defaults unmap a freed large
  # block, so a later round pays the faults again (the test above would catch a no-op tune_malloc()).
  tunables, _, faults = _run("glibc.malloc.mmap_max=65536")
  assert tunables.startswith("glibc.malloc.mmap_max=65536:")  # the user's own setting is kept, and first
  assert "glibc.malloc.mmap_max=0" not in tunables
  assert min(faults) >= 100


def test_the_users_tunables_are_kept_and_only_missing_ones_added():
  assert set(cpu.tuned_environment("").split(":")) == WANTED
  mine = "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=4"
  wanted = cpu.tuned_environment(mine)
  assert wanted.startswith(mine + ":")
  assert "glibc.malloc.hugetlb=1" not in wanted and "glibc.malloc.arena_max=1" not in wanted
  assert "glibc.malloc.mmap_max=0" in wanted
  full = cpu.tuned_environment(wanted)
  assert full == wanted  # nothing missing: no second re-execution
