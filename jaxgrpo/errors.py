"""The exceptions jaxgrpo raises on bad input, in one hierarchy, and the CLI's exit codes.

    JaxgrpoError
    ├── ConfigError        (also a ValueError): a config key has a bad value, the keys
    │                      contradict each other, or an input a key names (a data file, a
    │                      reasoning-gym task, the device count) does not fit; the message is
    │                      one line naming the key (``config.x.y``).
    └── CheckpointError    (also a ValueError and a RuntimeError): a checkpoint — a training
        │                  run's orbax state or run directory, or a model's weights
        │                  (safetensors, GGUF, tokenizer) — is missing, truncated, corrupt or
        │                  does not match; the message names the path.
        └── CheckpointNotFoundError (also a FileNotFoundError): the path does not exist.

The built-in bases keep ``except ValueError`` / ``except RuntimeError`` /
``except FileNotFoundError`` callers working. ``experiments/run.py`` prints either kind as one
line (no traceback) and exits with one of the codes below. This module imports nothing from
jaxgrpo, so every module can import it without an import cycle.
"""
from __future__ import annotations

__all__ = ["JaxgrpoError", "ConfigError", "CheckpointError", "CheckpointNotFoundError",
           "EXIT_OK", "EXIT_ERROR", "EXIT_CONFIG_ERROR", "EXIT_STOPPED"]

EXIT_OK = 0  # the run finished (all config.steps, final evaluation, summary.json written)
EXIT_ERROR = 1  # any other error (corrupt checkpoint, non-finite metrics, a crash)
EXIT_CONFIG_ERROR = 2  # a bad config value or input (ConfigError), before anything heavy ran
EXIT_STOPPED = 75  # stopped by SIGTERM / SIGINT after saving a checkpoint; resume to continue
# (75 is EX_TEMPFAIL of sysexits.h: "try again later" — what a preempted run should do.)


class JaxgrpoError(Exception):
    """Base class of the errors jaxgrpo raises for bad input (config, files)."""


class ConfigError(JaxgrpoError, ValueError):
    """A config value (or a combination of values) that cannot run; names the key."""


class CheckpointError(JaxgrpoError, ValueError, RuntimeError):
    """A training checkpoint or model-weights file that is missing, corrupt or does not fit."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path (or a file it refers to) does not exist."""
