"""glibc malloc settings for XLA:CPU's large per-step buffers: `tune_malloc()` first thing in an entry point.

XLA:CPU allocates a computation's temporaries afresh at every execution, through malloc, from a worker
thread. In the `small` train step of docs/design.md §10 they are about 6 GB (the [6080, 32000] float32
logits and their gradient are 778 MB each). By default glibc gives every allocation over 32 MB its own mmap
and unmaps it on free, so each step the kernel faults the memory in again and zeroes it:
- in 4 KB pages that fault-and-zero work was about a quarter of the step;
- in 2 MB transparent huge pages (`glibc.malloc.hugetlb=1`) the faults are 512 times fewer, but zeroing
  the same gigabytes every step still cost seconds of system CPU time.

The tunables set here keep freed memory in the process, so the next step reuses it without a fault:
- `glibc.malloc.mmap_max=0`: no per-allocation mmaps; large blocks come from the heap;
- `glibc.malloc.trim_threshold` (huge): the heap is never handed back to the kernel;
- `glibc.malloc.arena_max=1`: every thread allocates from the main heap. A worker thread's own arena
  would still mmap (and unmap) any block larger than its 64 MB arena, whatever mmap_max says;
- `glibc.malloc.hugetlb=1`: the heap is madvise'd for transparent huge pages (where the kernel's mode is
  `madvise`; no effect under `always` or `never`).
The resident memory then stays at the process's high-water mark instead of falling between steps.
The measured effect of each tunable: docs/benchmarks.md, "Host memory: glibc malloc tunables".

glibc reads tunables only when a process starts, so the process re-executes itself once with them set.
Tunables already named in GLIBC_TUNABLES are left as the user set them. Nothing happens outside Linux.
"""
from __future__ import annotations

import os
import sys

TUNABLES = {
    "glibc.malloc.hugetlb": "1",
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.trim_threshold": str(2**62),
    "glibc.malloc.arena_max": "1",
}


def tuned_environment(tunables: str) -> str:
  """`tunables` (a GLIBC_TUNABLES value) with each of TUNABLES appended that it does not already name."""
  named = {item.split("=", 1)[0] for item in tunables.split(":") if item}
  missing = [f"{name}={value}" for name, value in TUNABLES.items() if name not in named]
  return ":".join(([tunables] if tunables else []) + missing)


def tune_malloc() -> None:
  """Re-executes this process (same interpreter, same command line) with TUNABLES added to GLIBC_TUNABLES;
  returns at once outside Linux or when nothing is missing (after the re-execution, or when set by hand)."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  wanted = tuned_environment(tunables)
  if wanted == tunables or not sys.platform.startswith("linux"):
    return
  os.environ["GLIBC_TUNABLES"] = wanted
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
