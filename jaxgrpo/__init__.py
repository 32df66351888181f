"""jaxgrpo: GRPO-style RL on verifiable rewards in pure JAX.

One training step, read top to bottom in ``jaxgrpo/step.py``:
  encode -> sampling (jit) -> rewards (host, or token ids in jit) -> embed -> rollout assembly
  -> advantages (the configured chain) -> losses -> optax update (jit, ``train.make_update_fn``);
  ``jaxgrpo.loop.Trainer`` drives it (data, logging, evaluation, checkpoints).
"""
__version__ = "0.1.0"
