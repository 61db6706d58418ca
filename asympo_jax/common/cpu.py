"""The CPU speed tricks: why each exists, and the one switch of each.

This code was tuned on a 2-core CPU, where three changes made XLA:CPU much faster. They stay on every backend:
none changes the math, and none has been measured on an accelerator. A port or a profile on another
backend starts here.

1. RoPE cos and sin as inputs (`ROPE_AS_INPUT`). Computed inside a program, XLA:CPU fused the cosine and sine
   into every consumer of the rotated queries and keys (each layer, forward and backward) and evaluated them
   once per head and element. The train step and the sampler's prefill therefore take them from
   `model.decoder.rope_inputs`, a program of their own, so they arrive as inputs that XLA cannot fuse: the
   train step and the prefill both got measurably faster. With False,
   `rope_inputs` gives None and the model computes them in the same program (the same values up to float
   rounding; tests/test_train_step.py). A decode loop computes the RoPE of all its steps once, before the
   loop, either way.

2. Keys in chunks (`KEY_CHUNK`). The KV cache stores a layer's keys as
   [B, K, S / KEY_CHUNK, head_dim, KEY_CHUNK] (model/kv_cache.py), so the query-key product of attention
   (model.decoder.attention) reads a [head_dim, KEY_CHUNK] right operand per chunk, without a transpose. XLA:CPU
   streamed a [head_dim, 32] operand from memory about twice as fast as a [head_dim, S] one (at S = 96, the
   `tiny` generation workload). KEY_CHUNK is the chunk width; the cache rounds its slots up to a multiple of it.

3. glibc malloc tunables (`tune_malloc`, `MALLOC_TUNABLES`). XLA:CPU allocates a computation's temporaries
   afresh at every execution, through malloc, from a worker thread: about 6 GB in the `small` train step of
   docs/design.md §10 (the [6080, 32000] float32 logits and their gradient are 778 MB each). By default glibc gives every allocation
   over 32 MB its own mmap and unmaps it on free, so each step the kernel faulted the memory in again and
   zeroed it: about a quarter of the step in 4 KB pages, and still seconds of system CPU time per step in 2 MB
   transparent huge pages. The tunables keep freed memory in the process, so the next step reuses it without a fault:
   - `glibc.malloc.mmap_max=0`: no per-allocation mmaps; large blocks come from the heap;
   - `glibc.malloc.trim_threshold` (huge): the heap is never handed back to the kernel;
   - `glibc.malloc.arena_max=1`: every thread allocates from the main heap. A worker thread's own arena would
     still mmap (and unmap) any block larger than its 64 MB arena, whatever mmap_max says;
   - `glibc.malloc.hugetlb=1`: the heap is madvise'd for transparent huge pages (where the kernel's mode is
     `madvise`; no effect under `always` or `never`).
   The resident memory then stays at the process's high-water mark instead of falling between steps.
   glibc reads tunables only when a process starts, so `tune_malloc()`, the first thing train.py, eval.py and
   every benchmark do, re-executes the process once with them set. The switch is the environment: tunables
   already named in GLIBC_TUNABLES are left as the user set them. Nothing happens outside Linux.

Measured effects: docs/benchmarks.md, "Host memory: glibc malloc tunables" and "Why the CPU numbers are what
they are".
"""
from __future__ import annotations

import os
import sys

ROPE_AS_INPUT = True

KEY_CHUNK = 32

MALLOC_TUNABLES = {
    "glibc.malloc.hugetlb": "1",
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.trim_threshold": str(2**62),
    "glibc.malloc.arena_max": "1",
}


def tuned_environment(tunables: str) -> str:
  """`tunables` (a GLIBC_TUNABLES value) with each of MALLOC_TUNABLES appended that it does not already name."""
  named = {item.split("=", 1)[0] for item in tunables.split(":") if item}
  missing = [f"{name}={value}" for name, value in MALLOC_TUNABLES.items() if name not in named]
  return ":".join(([tunables] if tunables else []) + missing)


def tune_malloc() -> None:
  """Re-executes this process (same interpreter, same command line) with MALLOC_TUNABLES added to
  GLIBC_TUNABLES; returns at once outside Linux or when nothing is missing (after the re-execution, or when set
  by hand)."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  wanted = tuned_environment(tunables)
  if wanted == tunables or not sys.platform.startswith("linux"):
    return
  os.environ["GLIBC_TUNABLES"] = wanted
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
