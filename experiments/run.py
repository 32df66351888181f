"""Train a policy from an experiment config.

    python -m experiments.run                                   # the embedded default
    python -m experiments.run --config experiments/configs/dra_grpo.py --config.steps=50

Any field can be overridden with ``--config.<key>=<value>``; an unknown key or a value of the
wrong type fails at start, naming it. The resolved config is saved as ``<run_dir>/config.json``.
"""
from __future__ import annotations

import os
import sys

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")


def parse_config(argv):
    """The config named by ``--config`` (default: configs/default.py) with its overrides
    applied and validated. Exits with a one-line message naming a bad key or value."""
    from absl import flags
    from ml_collections import config_flags

    from jaxgrpo.config import validate

    fv = flags.FlagValues()
    try:
        # ml_collections applies --config.* overrides while defining the flag.
        holder = config_flags.DEFINE_config_file("config", DEFAULT, "experiment config file",
                                                 flag_values=fv, lock_config=True)
        rest = fv(argv)[1:]
        if rest:
            raise ValueError(f"unexpected arguments {rest}; use --config=FILE and "
                             "--config.<key>=<value>")
        config = holder.value
        validate(config)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
        msg = str(e).replace("\\n", " ").replace("\n", " ").strip("'\" ")
        sys.exit(f"config error: {msg}")
    return config


def main(argv=None):
    config = parse_config(list(sys.argv if argv is None else argv))
    from jaxgrpo.loop import run

    run_dir = run(config)
    print(f"[jaxgrpo] run directory: {run_dir}")


if __name__ == "__main__":
    main()
