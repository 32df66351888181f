"""``python -m experiments.diversity``: see experiments/diversity/testbed.py."""
from experiments._entry import main_entry
from experiments.diversity.testbed import main

if __name__ == "__main__":
    main_entry(main)
