"""GRPO (DeepSeekMath, arXiv 2402.03300): group-normalised advantages, std ddof 1, eps 1e-4.

Command:  python -m experiments.run --config experiments/configs/grpo.py
Hardware: one 2-core CPU (SmolLM2-135M-Instruct, reasoning-gym 2-digit addition), minutes.
Expected: reward and held-out accuracy rise over 20 steps, as for the default GRPO run; the
          CPU-scale comparison of all methods is experiments/tables/compare_methods.py.
"""
from experiments.configs.common import smoke_config


def get_config():
    c = smoke_config("grpo")
    c.advantage.baseline = "grpo"
    c.advantage.reward_transforms = ""

    return c
