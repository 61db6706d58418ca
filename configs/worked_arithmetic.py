"""The staleness study's task (docs/staleness_study.md): worked multi-term arithmetic, 30-75-token responses.

1. A scratch Qwen3 `tiny` model and tokenizer, warm-started with supervised NLL on the worked solutions
   (warm_start.target = solution), cached per seed in warm_start.cache_dir so a sweep does it once per seed.
2. RL on the same task: P = 8 prompts x G = 8 samples, one objective, fixed-lag staleness k (the study's grid
   at lr 2e-4).
3. Greedy accuracy on 100 held-out problems (seed 2; training draws use seed 1) every 10 steps.

Every objective logs the balance diagnostics and, with objective.split_grad_norms, the gradient norm of the
positive and of the negative side; behaviour log-probs are recorded in every run because grpo needs them
(the current-policy-only objectives never read them; they feed the offpolicy/* diagnostics).

    python train.py --config configs/worked_arithmetic.py --config.rollout.staleness=4 --config.objective.name=naive
"""
from asympo_jax.run.config import base_config

TASK = "proc:worked_arithmetic?min_terms=5&max_terms=8&min_value=1&max_value=9"


def get_config():
  c = base_config()
  c.seed = 0
  c.workdir = "runs/worked_arithmetic"
  c.model.scratch = "tiny"

  c.data.train = TASK + "&size=4000&seed=1"
  c.data.eval = TASK + "&size=100&seed=2"
  c.data.template = "bare"

  # 500: 15% greedy eval accuracy at seed 0 (token NLL 0.30), with room to move both ways; 200 left 5%.
  c.warm_start.steps = 500
  c.warm_start.lr = 3e-3
  c.warm_start.warmup_steps = 20
  c.warm_start.target = "solution"
  c.warm_start.cache_dir = "runs/warm_start_cache"

  c.rollout.staleness = 0
  c.rollout.mode = "fixed_lag"
  c.rollout.prompts_per_step = 8
  c.rollout.group_size = 8
  c.rollout.max_prompt_len = 32
  c.rollout.max_new_tokens = 80
  c.rollout.temperature = 1.0
  c.rollout.record_behaviour_logprobs = True

  c.objective.name = "asympo"
  c.objective.negative_scale = 0.5  # spo's lambda
  c.objective.split_grad_norms = True
  # The study's grid sets 2e-4 through its optim.lr axis: at 5e-5, 16 updates move the policy too little
  # (off-policy KL 0.0055 per token) for staleness to show (docs/staleness_study.md).
  c.optim.lr = 5e-5
  c.optim.clip_norm = 1.0
  c.train.steps = 30

  c.eval.every = 10
  c.eval.batch_size = 100
  c.checkpoint.every = 10
  c.checkpoint.keep = 1
  c.metrics.progress_bar = False
  return c
