"""jaxgrpo: GRPO-style RL on verifiable rewards in pure JAX.

The pipeline, one pure function per stage:
  sampling.sample -> rewards.* -> advantages.* -> losses.* -> optax update (train.make_train_step)
"""
__version__ = "0.1.0"
