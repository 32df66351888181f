"""DRA-Dr.GRPO (arXiv 2505.09655): DRA reweighting, then Dr.GRPO advantages.

Command:  python -m experiments.run --config experiments/configs/dra_dr_grpo.py
Hardware: one 2-core CPU (SmolLM2-135M-Instruct, reasoning-gym single-digit addition), minutes.
Expected: reward and held-out accuracy rise over 15 steps as for the other methods (not in the
          measured comparison table; see experiments/tables/results/compare_methods.md).
"""
from experiments.configs.common import smoke_config


def get_config():
    c = smoke_config("dra_dr_grpo")
    c.advantage.baseline = "dr_grpo"
    c.advantage.reward_transforms = "dra"
    c.loss.agg_mode = "seq-mean-token-sum-norm"
    return c
