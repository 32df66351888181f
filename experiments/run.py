"""Train a policy from an experiment config.

    python -m experiments.run                                   # the embedded default
    python -m experiments.run --config experiments/configs/dra_grpo.py --config.steps=50

Any field can be overridden with ``--config.<key>=<value>``; an unknown key or a value of the
wrong type fails at start, naming it. The resolved config is saved as ``<run_dir>/config.json``.
"""
from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT, "experiment config file",
                                          lock_config=True)


def main(argv):
    from jaxgrpo.loop import run
    run_dir = run(_CONFIG.value)
    print(f"[jaxgrpo] run directory: {run_dir}")


def cli(argv=None):
    argv = list(sys.argv if argv is None else argv)
    try:
        flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
        msg = str(e).strip("'\"").replace("\\n", " ")
        sys.exit(f"config error: {msg}")
    from jaxgrpo.config import validate
    try:
        validate(_CONFIG.value)
    except ValueError as e:
        sys.exit(f"config error: {e}")
    main(argv[:1])


if __name__ == "__main__":
    cli()
