"""ProGRPO / ARM (arXiv 2602.05281): GRPO advantages + alpha (c(q) - c(o|q)).

Command:  python -m experiments.run --config experiments/configs/progrpo.py
Hardware: one 2-core CPU (SmolLM2-135M-Instruct, reasoning-gym 2-digit addition), minutes.
Expected: reward and held-out accuracy rise over 20 steps, as for the default GRPO run; the
          CPU-scale comparison of all methods is experiments/tables/compare_methods.py.
"""
from experiments.configs.common import smoke_config


def get_config():
    c = smoke_config("progrpo")
    c.advantage.baseline = "grpo"
    c.advantage.reward_transforms = ""
    c.advantage.advantage_transforms = "progrpo"
    return c
