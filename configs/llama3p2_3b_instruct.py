"""Llama-3.2-3B-Instruct: the paper recipe of configs/paper.py (every value and its
source are listed there); an instruct model: its own chat template.

    huggingface-cli download meta-llama/Llama-3.2-3B-Instruct --local-dir checkpoints/Llama-3.2-3B-Instruct
    python train.py --config configs/llama3p2_3b_instruct.py \
        [--config.rollout.staleness=8] [--config.objective.name=spo]
"""
from configs import paper


def get_config():
  return paper.recipe(hf_path="checkpoints/Llama-3.2-3B-Instruct", config_json="data/model_configs/Llama-3.2-3B-Instruct.json",
                      template="chat", micro_batches=128, slots=8,
                      workdir="runs/llama3p2_3b_instruct")
