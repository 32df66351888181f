"""The memory plan: per-device memory of a config's update and sampler from an ahead-of-time
compile (``python -m experiments.memory_plan``; the code is in plan.py, the study in
README.md). Imports no JAX: the command starts itself again with fake devices first."""
