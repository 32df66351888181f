"""DRA-GRPO (arXiv 2505.09655): rewards reweighted by 1/(1+SMI) from completion embeddings, then GRPO.

Command:  python -m experiments.run --config experiments/configs/dra_grpo.py
Hardware: one 2-core CPU (SmolLM2-135M-Instruct, reasoning-gym single-digit addition), minutes.
Expected: held-out accuracy 0.22 -> 0.69 ± 0.01 after 15 steps (mean ± std over seeds 0-2,
          measured; experiments/tables/results/compare_methods.md).
"""
from experiments.configs.common import smoke_config


def get_config():
    c = smoke_config("dra_grpo")
    c.advantage.baseline = "grpo"
    c.advantage.reward_transforms = "dra"

    return c
