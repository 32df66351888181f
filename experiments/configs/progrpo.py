"""ProGRPO / ARM (arXiv 2602.05281): GRPO advantages + alpha (c(q) - c(o|q)).

Command:  python -m experiments.run --config experiments/configs/progrpo.py
Hardware: one 2-core CPU (SmolLM2-135M-Instruct, reasoning-gym single-digit addition), minutes.
Expected: held-out accuracy 0.22 -> 0.67 ± 0.01 after 15 steps (mean ± std over seeds 0-2,
          measured; experiments/tables/results/compare_methods.md).
"""
from experiments.configs.common import smoke_config


def get_config():
    c = smoke_config("progrpo")
    c.advantage.baseline = "grpo"
    c.advantage.reward_transforms = ""
    c.advantage.advantage_transforms = "progrpo"
    return c
