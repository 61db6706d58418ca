"""use_huge_pages(): a re-executed entry point keeps its command line, and glibc then puts its large
allocations (as XLA:CPU makes them, through malloc) on huge pages."""
import json
import os
import subprocess
import sys

import pytest

from asympo_jax import hugepages

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# After the call the child mallocs and touches 256 MB, then reports the process's huge-page memory.
_CHILD = """
import ctypes, json, os, sys
from asympo_jax import hugepages
hugepages.use_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 256 * 2**20
libc.memset(ctypes.c_void_p(libc.malloc(size)), 1, size)
with open("/proc/self/smaps_rollup") as f:
  huge_kb = next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
print(json.dumps([os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], huge_kb]))
"""
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables: Linux only")


def _run(tunables: str | None) -> tuple[str | None, list[str], int]:
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  done = subprocess.run([sys.executable, "-c", _CHILD, "--flag", "x y"], cwd=_ROOT, env=env, capture_output=True,
                        text=True, check=True)
  return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


@linux_only
def test_reexecution_keeps_the_command_line_and_puts_large_mallocs_on_huge_pages():
  tunables, argv, huge_kb = _run(None)
  assert argv == ["--flag", "x y"]
  if hugepages.thp_mode() == "madvise":
    assert tunables == "glibc.malloc.hugetlb=1"
    assert huge_kb >= 128 * 1024  # most of the 256 MB
  else:  # "always" gives huge pages anyway and "never" none: the process is left as it is
    assert tunables is None


@linux_only
def test_an_explicit_choice_is_kept():
  tunables, argv, huge_kb = _run("glibc.malloc.hugetlb=0")
  assert tunables == "glibc.malloc.hugetlb=0" and argv == ["--flag", "x y"]
  if hugepages.thp_mode() == "madvise":
    assert huge_kb < 128 * 1024
