"""DRA-GRPO (arXiv 2505.09655): rewards reweighted by 1/(1+SMI) from completion embeddings, then GRPO.

Command:  python -m experiments.run --config experiments/configs/dra_grpo.py
Hardware: one 2-core CPU (SmolLM2-135M-Instruct, reasoning-gym 2-digit addition), minutes.
Expected: reward and held-out accuracy rise over 20 steps, as for the default GRPO run; the
          CPU-scale comparison of all methods is experiments/tables/compare_methods.py.
"""
from experiments.configs.common import smoke_config


def get_config():
    c = smoke_config("dra_grpo")
    c.advantage.baseline = "grpo"
    c.advantage.reward_transforms = "dra"

    return c
