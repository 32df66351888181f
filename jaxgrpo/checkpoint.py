"""Checkpoints with orbax-checkpoint: the whole train state plus host-side metadata.

A checkpoint holds the train state pytree (params, optimizer state, step, RNG key) and a JSON
record of everything the host loop needs to continue exactly (data position, the config).
Restoring takes an abstract target (shapes, dtypes, shardings), so a sharded run restores
directly into its shardings. Errors name the checkpoint directory and what is wrong.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the run that restores it."""


def abstract_like(tree):
    """ShapeDtypeStructs (keeping shardings) for a pytree of arrays."""

    def one(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(one, tree)


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``directory/<step>/``."""

    def __init__(self, directory: str, *, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> Optional[int]:
        return self._mgr.latest_step()

    def all_steps(self):
        return list(self._mgr.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> None:
        """Writes a checkpoint and waits for it to be committed (so a crash after returns
        cannot lose it)."""
        self._mgr.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
        self._mgr.wait_until_finished()

    def restore(self, target_state: Any, step: Optional[int] = None) -> Tuple[Any, dict, int]:
        """Restores into the structure, shapes and shardings of ``target_state``.

        Returns (state, meta, step). Raises CheckpointError naming the directory and the
        problem for a missing, corrupt or incompatible checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        path = os.path.join(self.directory, str(step))
        if not os.path.isdir(path):
            raise CheckpointError(f"checkpoint step {step} not found in {self.directory} "
                                  f"(available: {self.all_steps()})")
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(target_state)),
                meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint {path} is incompatible with this run (different model, optimizer "
                f"or config?): {type(e).__name__}: {str(e)[:500]}") from e
        except Exception as e:  # corrupt / truncated files surface as many error types
            raise CheckpointError(
                f"checkpoint {path} could not be read (corrupt or truncated?): "
                f"{type(e).__name__}: {str(e)[:500]}") from e
        got = jax.tree.structure(out.state)
        want = jax.tree.structure(target_state)
        if got != want:
            raise CheckpointError(f"checkpoint {path} has a different state structure than "
                                  f"this run expects:\n  saved: {got}\n  expected: {want}")
        return out.state, dict(out.meta), int(step)

    def close(self) -> None:
        self._mgr.close()
