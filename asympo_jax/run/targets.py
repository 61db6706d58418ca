"""Compile targets of the plan: the devices of a name like `tpu:v5p:2x2x1` or `cpu:8`, and their chip's figures.

`tpu:<topology>` gives the devices of a TPU topology from libtpu (`jax.experimental.topologies`): no TPU is
needed to compile for them, only the libtpu release that jax pins (the `tpu` extra). `cpu:N` gives N host CPU
devices, which must exist when jax starts (the plan's command line sets `jax_num_cpu_devices`).

Chip figures (per chip): HBM and peak bfloat16 matmul throughput from docs/design.md §5 (Google Cloud's TPU
pages); HBM bandwidth from the same pages (v5e 819 GB/s, v6e 1,640 GB/s, v5p 2,765 GB/s); chips per host: 8 for
v5e and v6e (v5e-8 and v6e-8 are one host), 4 for v5p. Simulated CPU devices
share the host's memory, so each gets the host's RAM / N, and have no peak: no roofline there.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Sequence

import jax

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int  # memory per device
  peak_flops: float | None  # bfloat16 FLOP/s per device; None: unknown (no roofline)
  hbm_bandwidth: float | None  # bytes/s per device
  host_chips: int = 1  # the most chips one host of this kind holds


CHIPS: dict[str, Chip] = {
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9, host_chips=8),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9, host_chips=8),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9, host_chips=4),
}


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  devices: Sequence[jax.Device]
  chip: Chip


def _tpu(spec: str) -> Target:
  version, _, topology = spec.partition(":")
  if version not in CHIPS or not topology:
    raise ValueError(f"tpu target {spec!r}: expected <version>:<topology> with a version of {sorted(CHIPS)}, "
                     "e.g. tpu:v5p:2x2x1")
  # Every jax process on a host with libtpu takes libtpu's lock file, even a CPU run; a plan only compiles and
  # never touches a chip, so it need not wait for (or block) a run that holds the lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  chip = CHIPS[version]
  dims = [int(n) for n in topology.split("x")]
  # libtpu assumes 4 chips per host; v5e-8 and v6e-8 are single hosts of 8 chips: say so when they fit one host.
  one_host = {}
  if math.prod(dims) <= chip.host_chips:
    one_host = dict(chips_per_host_bounds=tuple(dims + [1] * (3 - len(dims))))
  return Target(f"tpu:{spec}", topologies.get_topology_desc(spec, "tpu", **one_host).devices, chip)


def _cpu(spec: str) -> Target:
  if not spec.isdigit() or int(spec) < 1:
    raise ValueError(f"cpu target {spec!r}: expected cpu:N with N >= 1")
  n = int(spec)
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise ValueError(f"cpu:{n}: jax has {len(devices)} CPU devices; set jax_num_cpu_devices={n} (or "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={n}) before jax starts")
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return Target(f"cpu:{n}", devices[:n], Chip(f"CPU (host RAM / {n})", ram // n, None, None))


KINDS: dict[str, Callable[[str], Target]] = {"tpu": _tpu, "cpu": _cpu}


def configure_process(name: str) -> None:
  """What a process must set before jax starts to compile for `name`: its platform is the host CPU (a plan
  runs nothing on a chip, on a TPU host either), with N devices for cpu:N."""
  if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")
  kind, _, spec = name.partition(":")
  if kind == "cpu" and spec.isdigit():
    jax.config.update("jax_num_cpu_devices", int(spec))


def target(name: str) -> Target:
  """The Target of `name`: tpu:<version>:<topology> or cpu:N."""
  kind, _, spec = name.partition(":")
  if kind not in KINDS:
    raise ValueError(f"unknown target {name!r}: expected one of {sorted(KINDS)} (tpu:v5p:2x2x1, cpu:8)")
  return KINDS[kind](spec)
