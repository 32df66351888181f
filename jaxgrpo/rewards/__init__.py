"""Rewards: answer extraction, math-verify equivalence in a process pool, reward functions,
reasoning-gym tasks and a jittable token-level reward.

Importing this package is cheap: each name is imported from its submodule on first access
(PEP 562), so math-verify, reasoning-gym, datasets and JAX load only when used, and the
math-verify pool starts only on the first batch.

Modules:
  extract           extract_answer (``<answer>``, ``\\boxed``/``\\fbox``, ``####``) - host, linear time
  math_verify_pool  MathVerifier (persistent worker pool with deadlines), math_equal
  functions         format_reward, cosine_scaled_reward, soft_overlong_punishment,
                    RewardSpec, make_reward_fn (weighted sum)
  tasks             make_task (reasoning-gym prompt sources + scoring), load_prompts (local files)
  token_rewards     digit_match_reward (pure jnp, runs inside jit)
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # extract
    "extract_answer": "extract",
    "extract_boxed": "extract",
    "extract_answer_tag": "extract",
    "extract_hash": "extract",
    # math-verify pool
    "MathVerifier": "math_verify_pool",
    "math_equal": "math_verify_pool",
    "math_verify_score": "math_verify_pool",
    "STATUS_NAMES": "math_verify_pool",
    # reward functions
    "RewardSpec": "functions",
    "RewardOutput": "functions",
    "REWARD_REGISTRY": "functions",
    "make_reward_fn": "functions",
    "register_reward": "functions",
    "DRA_REWARDS": "functions",
    "format_reward": "functions",
    "tag_count_reward": "functions",
    "accuracy_reward": "functions",
    "cosine_scaled_reward": "functions",
    "soft_overlong_punishment": "functions",
    # tasks
    "ReasoningGymTask": "tasks",
    "make_task": "tasks",
    "load_prompts": "tasks",
    "SUPPORTED_TASKS": "tasks",
    # token rewards
    "digit_match_reward": "token_rewards",
    "encode_digit_targets": "token_rewards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
