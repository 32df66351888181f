"""The peers' race: whole GRPO steps of jaxgrpo against TRL and Tunix (``python -m
experiments.race``; the code is in bench.py, the study in README.md)."""
