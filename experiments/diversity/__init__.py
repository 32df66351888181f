"""The diversity testbed: does diversity survive GRPO? (``python -m experiments.diversity``; the
code is in testbed.py and diversity_screen.py, the report in README.md)."""
