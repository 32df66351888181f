"""DaGRPO (arXiv 2512.06337, INTERPRETATION in METHODS.md §3): pairwise masked advantages, off-policy anchors.

Command:  python -m experiments.run --config experiments/configs/dagrpo.py
Hardware: one 2-core CPU (SmolLM2-135M-Instruct, reasoning-gym single-digit addition), minutes.
Expected: held-out accuracy 0.22 -> 0.87 ± 0.06 after 15 steps (mean ± std over seeds 0-2,
          measured; experiments/tables/results/compare_methods.md).
"""
from experiments.configs.common import smoke_config


def get_config():
    c = smoke_config("dagrpo")
    c.advantage.baseline = "dagrpo"
    c.advantage.reward_transforms = ""
    c.anchors.enabled = True
    return c
