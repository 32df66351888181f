"""The errors a user can cause, one class per kind, so a front end can print them as one line.

* :class:`ConfigError` (a ``ValueError``): a config key has a bad value, or an input it names (a
  data file, a reasoning-gym task, the device count) does not fit. The message names the key.
* :class:`CheckpointError` (a ``RuntimeError``): a training checkpoint or run directory is
  missing, corrupt, or does not match the run that restores it. The message names the path.

``experiments/run.py`` prints either as one line (no traceback) and exits with
:data:`EXIT_CONFIG_ERROR` or :data:`EXIT_ERROR`; see its module doc for all exit codes.
"""
from __future__ import annotations

__all__ = ["ConfigError", "CheckpointError", "EXIT_OK", "EXIT_ERROR", "EXIT_CONFIG_ERROR",
           "EXIT_STOPPED"]

EXIT_OK = 0  # the run finished (all config.steps, final evaluation, summary.json written)
EXIT_ERROR = 1  # any other error (corrupt checkpoint, non-finite metrics, a crash)
EXIT_CONFIG_ERROR = 2  # a bad config value or input (ConfigError), before anything heavy ran
EXIT_STOPPED = 75  # stopped by SIGTERM / SIGINT after saving a checkpoint; resume to continue
# (75 is EX_TEMPFAIL of sysexits.h: "try again later" — what a preempted run should do.)


class ConfigError(ValueError):
    """A bad config value or input; the message is one line naming the key (``config.x.y``)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the run that restores it."""
