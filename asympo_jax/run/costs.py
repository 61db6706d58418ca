"""FLOPs of a train step and of a rollout, every loop trip counted, and their roofline time on a chip.

Both come from the model's formula (model/flops.py) and the loop trip counts the config implies: the
micro-batches and layers of the train step; for the rollout, the prefill and every decode step: of every decode
segment of the static sampler (rollout/sampler.py), or of the continuous engine's slots (rollout/engine.py), as
if no row stopped early (the worst case, which a batch reaches when one row runs to rollout.max_new_tokens).

- model FLOPs: what the math needs: the forward, the backward (twice the forward; once per gradient the
  objective asks for: three with objective.split_grad_norms) and the reference policy's forward when
  objective.kl_coef > 0. MFU counts these.
- executed FLOPs: model FLOPs plus what remat = full recomputes (the layers' forward once more).
- roofline seconds: the train step at the chips' peak (it is compute-bound: thousands of tokens per weight
  read); for each of the rollout's calls (rollout.micro_batches), the prefill at peak; each decode step at the
  slower of its FLOPs at peak and its HBM reads at the chip's bandwidth: every weight (in the sampler's dtype,
  gathered whole on each device) and the device's share of the KV cache.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import ml_collections

from asympo_jax.model import flops, kv_cache
from asympo_jax.model.architecture import ModelConfig
from asympo_jax.rollout import sampler
from asympo_jax.train import objectives
from asympo_jax.run.targets import Chip


@dataclasses.dataclass(frozen=True)
class Cost:
  model_flops: float  # per step, all devices together
  executed_flops: float
  seconds: float | None  # roofline time; None without a chip peak
  peak_flops: float | None  # of all devices together

  def mfu(self) -> float | None:
    """Model FLOPs per second at the roofline time, over the devices' peak: the best MFU the program can reach."""
    return None if self.seconds is None else self.model_flops / (self.seconds * self.peak_flops)


def train_step(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, chip: Chip, devices: int) -> Cost:
  rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
  length, scored = cfg.rollout.max_prompt_len + cfg.rollout.max_new_tokens, cfg.rollout.max_new_tokens
  forward = flops.forward_flops(model_cfg, rows * length, length, rows * scored)
  objective = objectives.resolve(cfg)
  gradients = 3 if objective["split_grad_norms"] else 1
  model = forward * (1 + 2 * gradients) + (forward if objective["kl_coef"] > 0 else 0.0)
  recompute = forward - 2.0 * rows * scored * model_cfg.hidden_size * model_cfg.vocab_size
  executed = model + (recompute * gradients if model_cfg.remat == "full" else 0.0)
  peak = None if chip.peak_flops is None else devices * chip.peak_flops
  return Cost(model, executed, None if peak is None else executed / peak, peak)


class Phase(NamedTuple):
  """Decode steps that each run `rows` rows over a KV cache of `slots` slots."""
  steps: int
  rows: int
  slots: int


def static_phases(cfg_rollout: ml_collections.ConfigDict, call_prompts: int) -> list[Phase]:
  """One call of the static sampler: every decode step of every decode segment, no row stopping early."""
  r, step, phases = cfg_rollout, 1, []
  prompt_len = sampler.prompt_bucket(r.max_prompt_len, r.max_prompt_len)
  for slots, end in sampler.decode_segments(prompt_len, r.max_new_tokens, r.decode_segments):
    phases.append(Phase(max(0, end - step), call_prompts * r.group_size, slots))
    step = max(step, end)
  return phases


def engine_phases(cfg_rollout: ml_collections.ConfigDict, slots_total: int) -> list[Phase]:
  """The continuous engine's decode steps with every slot busy and every row running to max_new_tokens: each
  row's tokens after its first (the prefill's), over the slots, at the slots' full cache length."""
  r = cfg_rollout
  tokens = r.prompts_per_step * r.group_size * (r.max_new_tokens - 1)
  length = kv_cache.chunked_slots(sampler.prompt_bucket(r.max_prompt_len, r.max_prompt_len) + r.max_new_tokens)
  return [Phase(-(-tokens // slots_total), slots_total, length)]


def rollout(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, chip: Chip, devices: int, calls: int,
            call_prompts: int, phases: list[Phase], weight_bytes: float, kv_bytes_per_row_slot: float) -> Cost:
  """A step's rollout: `calls` calls, each prefilling `call_prompts` prompts then decoding `phases`.
  `weight_bytes`: the weights one device reads per decode step; `kv_bytes_per_row_slot`: the KV cache bytes
  of one row and one cache slot (all layers, keys and values), of which a device holds rows / devices."""
  r = cfg.rollout
  prompt_len = sampler.prompt_bucket(r.max_prompt_len, r.max_prompt_len)
  total = flops.forward_flops(model_cfg, call_prompts * prompt_len, prompt_len, call_prompts)
  peak = chip.peak_flops
  seconds = None if peak is None else total / (devices * peak)
  for phase in phases:
    one = flops.forward_flops(model_cfg, phase.rows, phase.slots, phase.rows)
    total += phase.steps * one
    if seconds is not None:
      reads = (weight_bytes + kv_bytes_per_row_slot * phase.rows * phase.slots / devices) / chip.hbm_bandwidth
      seconds += phase.steps * max(one / (devices * peak), reads)
  return Cost(calls * total, calls * total, None if seconds is None else calls * seconds,
              None if peak is None else devices * peak)
