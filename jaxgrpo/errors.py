"""The exceptions jaxgrpo raises on bad input, in one hierarchy.

    JaxgrpoError
    ├── ConfigError        (also a ValueError): a config key has a bad value or the keys
    │                      contradict each other; the message names the key.
    └── CheckpointError    (also a ValueError and a RuntimeError): a checkpoint — a training
        │                  run's orbax state or a model's weights (safetensors, GGUF, tokenizer)
        │                  — is missing, truncated, corrupt or does not fit; the message names
        │                  the path.
        └── CheckpointNotFoundError (also a FileNotFoundError): the path does not exist.

The built-in bases keep ``except ValueError`` / ``except RuntimeError`` /
``except FileNotFoundError`` callers working. This module imports nothing from jaxgrpo, so every
module can import it without an import cycle.
"""
from __future__ import annotations

__all__ = ["JaxgrpoError", "ConfigError", "CheckpointError", "CheckpointNotFoundError"]


class JaxgrpoError(Exception):
    """Base class of the errors jaxgrpo raises for bad input (config, files)."""


class ConfigError(JaxgrpoError, ValueError):
    """A config value (or a combination of values) that cannot run; names the key."""


class CheckpointError(JaxgrpoError, ValueError, RuntimeError):
    """A training checkpoint or model-weights file that is missing, corrupt or does not fit."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path (or a file it refers to) does not exist."""
