"""Large host buffers on transparent huge pages: `use_huge_pages()` first thing in an entry point.

XLA:CPU allocates a computation's temporaries afresh at every execution. glibc serves each allocation over
32 MB with a new mmap, and the kernel then faults it in one 4 KB page at a time: in the DESIGN §3 `small`
train step, with its [6080, 32000] float32 logits and their gradient (778 MB each), that was a quarter of
the step (13.8 s against 10.1 s with huge pages, at 78aae14 on the 2-core CI machine). glibc's tunable
`glibc.malloc.hugetlb=1` has those mappings madvise'd for transparent huge pages (2 MB), 512 times fewer
faults. glibc reads tunables only when a process starts, so the process re-executes itself once with it set.

Set GLIBC_TUNABLES yourself (e.g. `glibc.malloc.hugetlb=0`) to keep your own choice; nothing happens either
outside Linux or where the kernel's transparent huge pages are `never` (off) or `always` (already on).
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode() -> str | None:
  """The kernel's transparent-huge-page mode ("always", "madvise" or "never"), None when it has none."""
  try:
    with open(THP_MODE_FILE) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def use_huge_pages() -> None:
  """Re-executes this process (same interpreter, same command line) with glibc's huge-page tunable when the
  kernel gives huge pages on request and GLIBC_TUNABLES does not set the tunable; otherwise returns."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables or not sys.platform.startswith("linux") or thp_mode() != "madvise":
    return
  os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
