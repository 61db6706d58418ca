"""The shared recipe of the paper configs: async RL on MATH-level problems for a 1.7B-4B Hugging Face model on
one accelerator host (FSDP over its devices: 4 on a v5p-8, 8 on a v6e-8), evaluated on AIME24/25, AMC23,
MATH500, GSM8K and Minerva.

Not a config file itself: configs/qwen3_1p7b_base.py, qwen3_4b_base.py and llama3p2_3b_instruct.py call
`recipe`. Where each value comes from: the ASymPO paper (arXiv:2606.03070) was only reachable as its
abstract when this was written, so none of its exact hyperparameters are here; treat the values marked ours
as starting points to sweep.

- data.train = math_train (Hendrycks MATH train, 7,500 problems, from the hub): the issue asks for MATH-level
  training data; the paper's abstract for math-reasoning post-training.
- data.eval = aime24, aime25, amc23, math500, gsm8k, minerva: the issue's benchmark list.
- data.hub = True: math_train, aime25 and minerva ship no local copy (data/math/README.md).
- objective.name = asympo, eps = 1e-3: the method under study; eps is this codebase's default floor (ours).
- objective.negative_scale = 0.5: spo's lambda in the issue's staleness sweep (for --config.objective.name=spo).
- advantage.std_normalize = True: GRPO's group advantage (DeepSeekMath, arXiv:2402.03300).
- rollout.group_size = 8: as in SimpleRL-Zoo (arXiv:2503.18892) and Dr. GRPO (arXiv:2503.20783).
  rollout.prompts_per_step = 128: ours (1,024 responses a step).
- rollout.temperature = 1.0, top_p = 1.0: samples from the policy itself, which the objectives assume; as in
  DAPO (arXiv:2503.14476).
- rollout.max_new_tokens = 3072: ours, near Dr. GRPO's 3,000-token cap. max_prompt_len = 512: ours, covers
  MATH prompts with the template.
- rollout.staleness = 4, mode = fixed_lag: ours. Staleness is the axis to sweep (--config.rollout.staleness=k);
  fixed lag makes runs reproducible.
- optim.lr = 1e-6, constant, no warm-up: 1e-6 as in DAPO, SimpleRL-Zoo and Dr. GRPO.
- optim.b1 = 0.9, b2 = 0.999, weight_decay = 0, clip_norm = 1.0: ours (AdamW's usual betas, global-norm clip).
- model.param_dtype = float32: ours. In bfloat16 a 1e-6 step is far below the rounding of weights near 0.02 and
  would be lost.
- model.dtype = bfloat16: float32 master weights, bfloat16 compute, as MaxText, Tunix, verl, AReaL, TRL and
  prime-rl run (docs/design.md §8): a TPU runs float32 matmuls as several bfloat16 passes, and the generator
  copy and KV cache take half the memory and half the HBM reads per decode step.
- model.attention = auto: the memory-efficient attention of the devices the run is on (splash on TPU, cudnn on
  GPU, chunked on CPU; docs/design.md §12), so the same config runs on a TPU or a GPU; ours. Without it the
  train step's float32 [T, T] scores at 3,584 tokens fill most of a v6e chip.
- model.remat = full, scan_layers = True: ours (memory at 3.5k tokens a row; one compiled layer).
- mesh = (data 1, fsdp all, tensor 1): ours. FSDP over every device of one host (a v5p-8 has 4, a v6e-8 8); the
  4B model's float32 params and AdamW state alone take 64 GB.
- rollout.engine = continuous (docs/design.md §9): its memory is set by its slots, not by the 1,024 rows, and
  rows that end early free their slot for the next instead of idling until the longest ends; ours.
- train.micro_batches = 128 (8 rows each), rollout.slots = 8 (per data shard, i.e. per chip with FSDP over all
  chips), per model in its config file: ours, from the plan (`python -m asympo_jax.run.plan`, docs/plan.md)
  of Qwen3-4B on a v6e-8 (32 GiB a chip, the least memory per chip; Qwen3-4B the largest model), where the
  train step (or eval), the rollout and a second generator copy must fit together. 16 slots and 32
  micro-batches needed 53.6 GiB of 32 there; the engine's temporaries grow with its slots. The other models
  and the v5p-8 take the same values; docs/plan.md says which of them were planned. logprob_chunk = 512 (the
  150k-vocab log-probs are never materialised): ours.
- eval.batch_size = 64 prompts per greedy call: ours; on a v6e-8 they fill the engine's 8 x 8 slots in one
  static wave, on a v5p-8 they go through its 4 x 8 slots. The plan compiles eval's generate too.
- train.steps = 500 (about 8.5 passes over MATH train), eval.every = checkpoint.every = 25, keep 3: ours.

- model.config_json = data/model_configs/<model>.json: the model's published config.json, so that
  `python -m asympo_jax.run.plan` compiles the recipe without the checkpoint (data/model_configs/README.md).

Download the checkpoint first (the machines this was built on have no network):

    huggingface-cli download Qwen/Qwen3-1.7B-Base --local-dir checkpoints/Qwen3-1.7B-Base
"""
from __future__ import annotations

import ml_collections

from asympo_jax.run.config import base_config

EVAL_BATCH = 64
EVAL = "aime24_test,aime25_test,amc23_test,math500_test,gsm8k_test,minerva_test"


def recipe(hf_path: str, config_json: str, template: str, workdir: str, micro_batches: int,
           slots: int) -> ml_collections.ConfigDict:
  c = base_config()
  c.seed = 0
  c.workdir = workdir
  c.model.hf_path = hf_path
  c.model.config_json = config_json
  c.model.param_dtype = "float32"
  c.model.dtype = "bfloat16"
  c.model.attention = "auto"
  c.model.remat = "full"
  c.model.scan_layers = True

  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

  c.data.train = "math_train"
  c.data.eval = EVAL
  c.data.hub = True
  c.data.template = template
  c.data.reward_workers = 8

  c.rollout.staleness = 4
  c.rollout.mode = "fixed_lag"
  c.rollout.prompts_per_step = 128
  c.rollout.group_size = 8
  c.rollout.max_prompt_len = 512
  c.rollout.max_new_tokens = 3072
  c.rollout.temperature = 1.0
  c.rollout.top_p = 1.0
  c.rollout.engine = "continuous"
  c.rollout.slots = slots

  c.advantage.std_normalize = True
  c.objective.name = "asympo"
  c.objective.eps = 1e-3
  c.objective.negative_scale = 0.5

  c.optim.lr = 1e-6
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0

  c.train.steps = 500
  c.train.micro_batches = micro_batches
  c.train.logprob_chunk = 512

  c.eval.every = 25
  c.eval.batch_size = EVAL_BATCH
  c.checkpoint.every = 25
  c.checkpoint.keep = 3
  return c
