"""``python -m experiments.memory_plan``: see experiments/memory_plan/plan.py."""
from experiments._entry import main_entry
from experiments.memory_plan.plan import main

if __name__ == "__main__":
    # No CPU settings: the plan restarts itself with its fake-device flag before JAX starts.
    main_entry(main, tune=False)
