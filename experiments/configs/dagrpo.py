"""DaGRPO (arXiv 2512.06337, INTERPRETATION in METHODS.md §3): pairwise masked advantages, off-policy anchors.

Command:  python -m experiments.run --config experiments/configs/dagrpo.py
Hardware: one 2-core CPU (SmolLM2-135M-Instruct, reasoning-gym 2-digit addition), minutes.
Expected: reward and held-out accuracy rise over 20 steps, as for the default GRPO run; the
          CPU-scale comparison of all methods is experiments/tables/compare_methods.py.
"""
from experiments.configs.common import smoke_config


def get_config():
    c = smoke_config("dagrpo")
    c.advantage.baseline = "dagrpo"
    c.advantage.reward_transforms = ""
    c.anchors.enabled = True
    return c
