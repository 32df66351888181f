"""``python -m experiments.race``: see experiments/race/bench.py."""
from experiments._entry import main_entry
from experiments.race.bench import main

if __name__ == "__main__":
    # No CPU settings here: each peer trains in a child process that sets up its own.
    main_entry(main, tune=False)
