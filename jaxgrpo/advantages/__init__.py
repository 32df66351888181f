"""Advantage transforms over ``[P, G]`` groups: GRPO / Dr.GRPO / RLOO / DaGRPO baselines, DRA
reward re-weighting, ProGRPO advantage re-weighting, and their composition by name.

One public function per method, on arrays (notebook use), its options typed once::

    from jaxgrpo.advantages import grpo, dr_grpo, rloo, dra_reweight, dagrpo, arm_reweight
    adv = grpo(rewards)                                   # [P, G] -> [P, G]
    adv, diag = grpo(rewards, return_diagnostics=True)

The same functions are the registered transforms (``"grpo"``, ``"dr_grpo"``, ``"rloo"``,
``"dagrpo"``, ``"dra"``, ``"progrpo"``); the rollout-level call is generated from each
signature (``jaxgrpo.advantages.registry``)::

    from jaxgrpo.advantages import make_advantage_fn, required_inputs
    fn = make_advantage_fn("dr_grpo", reward_transforms=("dra",))
    required_inputs("dr_grpo", ("dra",))                  # frozenset({"embeddings"})
"""
from jaxgrpo.advantages.dagrpo import add_anchors, dagrpo
from jaxgrpo.advantages.dra import dra_reweight
from jaxgrpo.advantages.grpo import dr_grpo, grpo, rloo
from jaxgrpo.advantages.progrpo import answer_confidence, arm_reweight, prompt_confidence
from jaxgrpo.advantages.registry import (Transform, available_transforms, get_transform,
                                         make_advantage_fn, register_transform, required_inputs)

__all__ = [
    # one function per method
    "grpo", "dr_grpo", "rloo", "dra_reweight", "dagrpo", "arm_reweight",
    # building blocks
    "add_anchors", "answer_confidence", "prompt_confidence",
    # registry and composition
    "Transform", "make_advantage_fn", "required_inputs", "register_transform", "get_transform",
    "available_transforms",
]
