"""The config schema: every key a run understands, with its default.

Config files in configs/ start from `base_config()` and override values. `validate` refuses unknown keys
(a typo in a config file or on the command line would otherwise be silently ignored) and bad values,
before anything is compiled. Each section's value checks live with the code that owns the section.
"""
from __future__ import annotations

import re
from typing import Sequence

import ml_collections
from absl import app

from asympo_jax.common.checks import ConfigError  # noqa: F401 -- for callers of validate_keys
from asympo_jax.common.checks import known_keys, refuse_unknown, unknown_keys
from asympo_jax.train import objectives


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = "runs/default"

  c.model = ml_collections.ConfigDict()
  c.model.hf_path = ""  # a local Hugging Face directory (config.json + safetensors + tokenizer)
  c.model.param_dtype = "float32"  # float32 | bfloat16: the stored (master) parameters
  c.model.dtype = "float32"  # float32 | bfloat16: the compute dtype inside the jitted programs
  # plain | chunked | splash (TPU) | cudnn (GPU) | auto (the devices' own: splash on TPU, cudnn on GPU, chunked
  # on CPU): the train step's and the prefill's attention (model/attention.py)
  c.model.attention = "plain"
  c.model.remat = "none"  # none | full | dots (jax.checkpoint policy for each layer)
  c.model.scan_layers = False
  c.model.scratch = ""  # "" | tiny | small: build a tokenizer and a random Qwen3 model in <workdir>/scratch_model
  # The model's published config.json (architecture only, no weights), e.g. data/model_configs/*.json: the plan
  # (asympo_jax/run/plan.py) builds the model from it when model.hf_path holds no checkpoint yet.
  c.model.config_json = ""

  # Supervised warm start (objective nll on gold answers) through the same loop and train step, before RL.
  c.warm_start = ml_collections.ConfigDict()
  c.warm_start.steps = 0  # 0: off
  c.warm_start.lr = 1e-3
  c.warm_start.warmup_steps = 0
  c.warm_start.target = "answer"  # answer: " \\boxed{gold}"; solution: the problem's worked solution
  # "": off; else the warm-started model is kept in <cache_dir>/<key> and reused by every run whose warm start
  # would be the same (same key: a hash of everything it depends on), so a sweep warm-starts once per seed
  c.warm_start.cache_dir = ""

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: the rest of the devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.data = ml_collections.ConfigDict()
  c.data.train = ""  # dataset spec, see asympo_jax/data/datasets.py
  c.data.eval = ""
  c.data.template = "plain"  # plain | chat
  c.data.max_eval_problems = 0  # 0: all
  c.data.dir = ""  # named benchmarks' local files; "": the repo's own data/math
  c.data.hub = False  # named benchmarks from the Hugging Face hub (needs network) instead of data.dir
  c.data.reward_workers = 2  # reward processes (math-verify runs there, under a per-answer deadline)
  c.data.reward_timeout_s = 2.0  # per answer; a slower answer gets reward 0 and counts as a timeout

  c.rollout = ml_collections.ConfigDict()
  c.rollout.staleness = 0
  c.rollout.mode = "fixed_lag"  # fixed_lag | bounded
  c.rollout.prompts_per_step = 8  # P
  c.rollout.group_size = 4  # G
  c.rollout.max_prompt_len = 64
  c.rollout.max_new_tokens = 64
  c.rollout.temperature = 1.0
  c.rollout.top_p = 1.0
  c.rollout.top_k = 0  # 0: off
  c.rollout.record_behaviour_logprobs = False
  # raw: log softmax of the model's logits; sampled: of the distribution drawn from (tempered, top-k/top-p
  # filtered, renormalised)
  c.rollout.behaviour_logprobs = "raw"
  # Sample a step's prompts in this many calls of the generate program in turn: its KV cache and activations
  # then hold 1/micro_batches of the rows (the samples do not change).
  c.rollout.micro_batches = 1
  c.rollout.decode_segments = 2  # decode loops, each over a KV cache just long enough for it (rollout/sampler.py)
  c.rollout.stop_sequences = []  # token-id lists that end a response (kept in it, like EOS)
  c.rollout.devices = ""  # "": sample on the training devices; "4:8": a disjoint device range
  # static: one batch decoded until its longest row ends; continuous: decode slots that finished rows leave and
  # waiting rows enter (rollout/engine.py)
  c.rollout.engine = "static"
  c.rollout.slots = 64  # continuous: decode slots per data shard (0: as many as rollout.kv_memory_mb holds)
  c.rollout.kv_memory_mb = 0.0  # continuous, with slots = 0: the KV cache budget per data shard, in MiB

  c.advantage = ml_collections.ConfigDict()
  c.advantage.std_normalize = True

  c.objective = objectives.config_section()  # each objective's keys live in its registry entry

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-6
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"  # constant | cosine
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.clip_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100
  c.train.micro_batches = 1
  c.train.logprob_chunk = 0  # 0: direct log-probs; else the time-chunk length

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 50
  c.checkpoint.keep = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0  # 0: off
  c.eval.samples = 0  # k samples per problem for avg@k and pass@k; 0: greedy accuracy only
  c.eval.temperature = 1.0  # of those samples (greedy accuracy is always reported too)
  c.eval.batch_size = 16  # prompts per generate call (rounded up to a multiple of the data x fsdp shards)
  c.eval.out_dir = ""  # "": <workdir>/eval

  c.metrics = ml_collections.ConfigDict()
  c.metrics.tensorboard = True
  c.metrics.wandb_project = ""  # "": off
  c.metrics.progress_bar = True

  c.distributed = ml_collections.ConfigDict()
  # "": one process, unless JAX_COORDINATOR_ADDRESS is set; "auto": jax's cluster detection (SLURM, TPU
  # pods, ...); else "host:port" of process 0, with num_processes and process_id below.
  c.distributed.coordinator = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  return c


def validate_keys(cfg: ml_collections.ConfigDict) -> None:
  """Refuses the keys of `cfg` that the schema lacks (a typo in a config file), naming the nearest known key."""
  schema = base_config()
  refuse_unknown(unknown_keys(cfg, schema), known_keys(schema))


def with_defaults(saved: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A saved run's config completed with base_config()'s values for the keys it predates (a new key's default
  keeps the old behaviour), the run's own values winning; a key the schema lacks is refused as validate_keys
  does."""
  validate_keys(saved)
  cfg = base_config()
  cfg.update(saved)
  return cfg


# --config.KEY=VALUE, --config.KEY VALUE, --config.FLAG, --noconfig.FLAG; KEY may end in list indices ([0]).
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=\[]+)")


def check_override_keys(keys: Sequence[str]) -> None:
  """Refuses dotted keys (command-line overrides, sweep axes) that the schema lacks, naming the nearest known
  key; ml_collections would fail on them with a bare AttributeError."""
  refuse_unknown(keys, known_keys(base_config()))


def override_keys(argv: Sequence[str]) -> list[str]:
  """The keys of the --config.KEY flags in `argv` (arguments after a bare "--" are not flags)."""
  args = list(argv[1:])
  args = args[:args.index("--")] if "--" in args else args
  return [m.group(1) for m in map(_OVERRIDE.match, args) if m]


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (app.run's flags_parser) once every --config.KEY override names a known key."""
  check_override_keys(override_keys(argv))
  return app.parse_flags_with_usage(argv)
