"""Qwen3-4B-Base: the paper recipe of configs/paper.py (every value and its
source are listed there); a base model: the plain Question/Answer template.

    huggingface-cli download Qwen/Qwen3-4B-Base --local-dir checkpoints/Qwen3-4B-Base
    python train.py --config configs/qwen3_4b_base.py \
        [--config.rollout.staleness=8] [--config.objective.name=spo]
"""
from configs import paper


def get_config():
  return paper.recipe(hf_path="checkpoints/Qwen3-4B-Base", config_json="data/model_configs/Qwen3-4B-Base.json",
                      template="plain", micro_batches=128, slots=8,
                      workdir="runs/qwen3_4b_base")
