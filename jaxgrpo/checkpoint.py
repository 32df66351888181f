"""Checkpoints with orbax-checkpoint: the whole train state plus host-side metadata.

A checkpoint holds the train state pytree (params, optimizer state, step, RNG key) and a JSON
record of everything the host loop needs to continue exactly (data position, the config).
Restoring takes an abstract target (shapes, dtypes, shardings), so a sharded run restores
directly into its shardings. Errors name the checkpoint directory and what is wrong.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from jaxgrpo.errors import CheckpointError  # re-exported: jaxgrpo.checkpoint.CheckpointError


@contextlib.contextmanager
def restore_errors(path: str, mismatch: str):
    """Turns what an orbax restore of ``path`` raises into a CheckpointError naming the path:
    ValueError / KeyError / TypeError mean the saved tree does not fit the target
    (``mismatch`` says what it was compared with); anything else is taken as a corrupt or
    truncated file (they surface as many error types)."""
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} {mismatch}: {type(e).__name__}: "
                              f"{str(e)[:500]}") from e
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read (corrupt or truncated?): "
                              f"{type(e).__name__}: {str(e)[:500]}") from e


def check_structure(path: str, got_tree: Any, want_tree: Any, what: str) -> None:
    """CheckpointError naming ``path`` when the restored tree's structure is not the target's."""
    got, want = jax.tree.structure(got_tree), jax.tree.structure(want_tree)
    if got != want:
        raise CheckpointError(f"checkpoint {path}: {what} has a different structure than "
                              f"expected:\n  saved: {got}\n  expected: {want}")


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
        with restore_errors(path, "is incompatible with this run (different model, optimizer "
                                  "or config?)"):
            out = self._mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(target_state)),
                meta=ocp.args.JsonRestore()))
        check_structure(path, out.state, target_state, "the saved train state")
        return out.state, dict(out.meta), int(step)

    def close(self) -> None:
        self._mgr.close()
