"""Advantage transforms over ``[P, G]`` groups: GRPO / Dr.GRPO / DaGRPO baselines, DRA reward
re-weighting, ProGRPO advantage re-weighting, and their composition by name.

Array-level functions (notebook use)::

    from jaxgrpo.advantages import grpo, dr_grpo, dra_reweight, dagrpo, arm_reweight

Rollout-level composition::

    from jaxgrpo.advantages import make_advantage_fn
    fn = make_advantage_fn("dr_grpo", reward_transforms=("dra",))
"""
from jaxgrpo.advantages.dagrpo import (add_anchors, anchor_trigger, dagrpo, dagrpo_score,
                                       dagrpo_transform)
from jaxgrpo.advantages.dra import dra_reweight, dra_transform, dra_weights
from jaxgrpo.advantages.grpo import dr_grpo, dr_grpo_transform, grpo, grpo_transform
from jaxgrpo.advantages.progrpo import (answer_confidence, arm_reweight, low_fraction_mean,
                                        progrpo_transform, prompt_confidence)
from jaxgrpo.advantages.registry import (Transform, available_transforms, get_transform,
                                         make_advantage_fn, register_transform)

__all__ = [
    "grpo", "dr_grpo", "grpo_transform", "dr_grpo_transform",
    "dra_reweight", "dra_weights", "dra_transform",
    "dagrpo", "dagrpo_score", "dagrpo_transform", "add_anchors", "anchor_trigger",
    "arm_reweight", "answer_confidence", "prompt_confidence", "low_fraction_mean",
    "progrpo_transform",
    "Transform", "make_advantage_fn", "register_transform", "get_transform",
    "available_transforms",
]
