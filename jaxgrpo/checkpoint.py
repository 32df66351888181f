"""Checkpoints with orbax-checkpoint: the whole train state plus host-side metadata.

A checkpoint holds the train state pytree (params, optimizer state, step, RNG key) and a JSON
record of everything the host loop needs to continue exactly (data position, the config).
Restoring takes an abstract target (shapes, dtypes, shardings), so a sharded run restores
directly into its shardings. Errors name the checkpoint directory and what is wrong.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import dataclasses
import shutil
from typing import Any, Callable, ClassVar, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from jaxgrpo import paths
from jaxgrpo import config
from jaxgrpo.errors import CheckpointError

__all__ = ["CheckpointError", "Checkpointer", "abstract_like", "describe_error", "check_meta",
           "CorruptCheckpointError", "SaveError", "restore_errors", "check_structure",
           "quiet_orbax"]

META_FILE = os.path.join("meta", "metadata")  # the JSON item inside <step>/


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointConfig(config.Section):
    """Checkpoints and resuming (see jaxgrpo.run_dir: what may change when a run is resumed).

    The ``config.checkpoint`` section (:class:`Checkpointer` and the trainer's save points).
    """

    NAME: ClassVar[str] = "checkpoint"
    every: int = config.key(
        10, 'save every this many steps (and at the end / on a signal); 0 = end only', ge=0)
    keep: int = config.key(2, 'checkpoints kept (the newest)', ge=1)
    resume: bool = config.key(
        True, 'continue an existing run_dir; False refuses a non-empty run_dir')
    fallback: bool = config.key(
        False, 'a corrupt latest checkpoint: resume from the newest intact one')
    async_save: bool = config.key(
        True,
        'Periodic saves copy the state to host memory, then write it in a background thread while'
        ' training goes on (orbax async checkpointing); the save at the end and on a signal '
        'always waits until the checkpoint is committed. False: every save blocks the loop.')


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files cannot be read (truncated array, empty or broken metadata);
    an earlier checkpoint may still be intact (``Checkpointer.restore(fallback=True)``)."""


class SaveError(CheckpointError):
    """A checkpoint could not be written (disk full, no permission, a bucket refused it); the
    message names the step, the path, the newest committed checkpoint and what to do."""


class _DropOrbax(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in record.pathname


@contextlib.contextmanager
def quiet_orbax():
    """Drops orbax's own log records (a failed save logs its traceback, hundreds of lines, at
    ERROR) while jaxgrpo reports the failure itself in one line. ``JAXGRPO_VERBOSE=1`` keeps
    them."""
    if os.environ.get("JAXGRPO_VERBOSE", "0") == "1":
        yield
        return
    f = _DropOrbax()
    loggers = [logging.getLogger(n) for n in ("absl", "orbax")]
    for lg in loggers:
        lg.addFilter(f)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(f)


def _what_to_do(e: BaseException) -> str:
    """A hint for a failed write, from the innermost OSError's errno when there is one."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "the disk is full: free space (or move config.run_dir), then resume"
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return "the directory is not writable: fix its permissions, then resume"
        e = e.__cause__ or e.__context__
    return "check that the directory is writable and has space, then resume"


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
        raise CheckpointError(f"checkpoint {path} {mismatch}: {describe_error(e)}") from e
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read (corrupt or truncated?): "
                              f"{describe_error(e)}") from e


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


def describe_error(e: BaseException, limit: int = 300) -> str:
    """One line saying what went wrong: the innermost cause of an orbax / TensorStore error
    (e.g. "OUT_OF_RANGE: Error reading ... byte range ... is not valid for value of size N"),
    without the multi-line TensorStore spec dump of the outer exception."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    inner = chain[-1]
    text = str(inner).split(" See full TensorStore details")[0]
    text = " ".join(text.split())
    return f"{type(inner).__name__}: {text[:limit]}" if text else type(inner).__name__


def check_meta(step_dir: str) -> dict:
    """The JSON metadata of checkpoint ``step_dir`` (data position, step, config); raises
    CheckpointError naming the file when it is missing, empty, not JSON or lacks a field."""
    path = paths.join(step_dir, "meta", "metadata")
    if not paths.isfile(path):
        raise CorruptCheckpointError(f"checkpoint {step_dir}: its metadata file {path} is "
                                     "missing")
    if paths.getsize(path) == 0:
        raise CorruptCheckpointError(f"checkpoint {step_dir}: its metadata file {path} is "
                                     "empty (0 bytes: the save was cut off or the file was "
                                     "truncated)")
    try:
        meta = json.loads(paths.read_text(path))
    except (OSError, ValueError) as e:
        raise CorruptCheckpointError(f"checkpoint {step_dir}: its metadata file {path} is not "
                                     f"valid JSON ({e})") from None
    if not isinstance(meta, dict) or "data_position" not in meta:
        raise CorruptCheckpointError(f"checkpoint {step_dir}: its metadata file {path} has no "
                                     "'data_position' (not written by jaxgrpo.loop?)")
    return meta


def _leaf_specs(tree) -> List[Tuple[str, tuple, str]]:
    """Sorted (path, shape, dtype) of a pytree of arrays / ShapeDtypeStructs / orbax metadata;
    paths are normalised ("params.layers.0.kernel") so a dataclass and a dict compare equal."""
    out = []
    for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for k in kp:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:
                parts.append(str(k))
        shape = tuple(getattr(leaf, "shape", ()) or ())
        out.append((".".join(parts), shape, str(getattr(leaf, "dtype", ""))))
    return sorted(out)


class Checkpointer:
    """Saves and restores ``(state, meta)`` under ``directory/<step>/``."""

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        # A URL (gs://...) stays a URL: os.path.abspath would make it <cwd>/gs:/...
        self.directory = paths.resolve(directory)
        self._pending: Optional[int] = None  # the step of a background save not yet waited for
        self._closed = False
        try:
            with quiet_orbax():
                self._mgr = ocp.CheckpointManager(
                    self.directory,
                    options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                         enable_async_checkpointing=async_save))
        except OSError as e:
            raise SaveError(f"cannot create the checkpoint directory {self.directory}: "
                            f"{describe_error(e)}; {_what_to_do(e)}") from None

    def latest_step(self) -> Optional[int]:
        return self._mgr.latest_step()

    def all_steps(self):
        return list(self._mgr.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False,
             block: bool = True) -> None:
        """Writes a checkpoint. ``block=True``: returns once it is committed (a crash after
        cannot lose it). ``block=False`` (with ``async_save``): returns once the arrays are
        copied to host memory -- the caller may donate or overwrite ``state`` at once -- and the
        files are written in the background; the next save, a restore or ``close`` waits for
        them. A crash mid-write leaves an uncommitted temporary directory that restore ignores,
        and the previous checkpoint intact."""
        self.wait()  # a failed earlier background save is reported as itself, first
        try:
            with quiet_orbax():
                self._mgr.save(int(step), args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                    force=force)
        except Exception as e:  # noqa: BLE001 - any failure of the write: one line
            raise self._save_error(int(step), e) from None
        self._pending = int(step)
        if block:
            self.wait()

    def _save_error(self, step: int, e: BaseException) -> SaveError:
        committed = self.committed_step()
        newest = (f"the newest committed checkpoint is step {committed}" if committed is not None
                  else "no checkpoint is committed yet")
        return SaveError(f"checkpoint {step} could not be written to "
                         f"{paths.join(self.directory, str(step))}: {describe_error(e)}; "
                         f"{newest}; {_what_to_do(e)}")

    def wait(self) -> None:
        """Blocks until a background save (``save(block=False)``) is committed; SaveError
        (one line) when it failed."""
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        try:
            with quiet_orbax():
                self._mgr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(step, e) from None

    def check(self) -> None:
        """Without blocking: SaveError when a background save has failed (so a run stops at
        the failure, not at the next save). Nothing while it is still being written."""
        if self._pending is None:
            return
        try:
            busy = self._mgr.is_saving_in_progress()
        except Exception:  # noqa: BLE001 - an orbax without the query: check at the next save
            return
        if not busy:
            self.wait()

    def committed_step(self) -> Optional[int]:
        """The newest checkpoint actually committed in the directory (re-read from storage,
        not orbax's record of what it was asked to save); None when there is none."""
        try:
            with quiet_orbax():
                self._mgr.reload()
                return self._mgr.latest_step()
        except Exception:  # noqa: BLE001 - an unreadable directory holds no usable checkpoint
            return None

    def finish(self) -> Tuple[Optional[int], Optional[SaveError]]:
        """Waits for an in-flight background save (an error exit must not leave it half
        written when the interpreter shuts down); returns (the newest committed step, the
        SaveError of a failed save or None). Never raises."""
        if self._closed:
            return None, None
        err = None
        try:
            self.wait()
        except SaveError as e:
            err = e
        return self.committed_step(), err

    def _mismatch(self, step: int, target_state: Any) -> Optional[str]:
        """Where the saved state's structure / shapes differ from ``target_state`` (None: they
        match, or the saved metadata cannot be read -- then it is the data that is bad)."""
        try:
            saved = self._mgr.item_metadata(step)["state"]
        except Exception:  # noqa: BLE001 - unreadable metadata: reported as corrupt
            return None
        if saved is None:
            return None
        got, want = _leaf_specs(saved), _leaf_specs(target_state)
        if [g[:2] for g in got] == [w[:2] for w in want]:
            return None
        gd, wd = dict((g[0], g[1]) for g in got), dict((w[0], w[1]) for w in want)
        for path in sorted(set(gd) | set(wd)):
            if gd.get(path) != wd.get(path):
                return (f"{len(got)} saved arrays vs {len(want)} expected; first difference at "
                        f"{path!r}: saved {gd.get(path, 'absent')}, this run "
                        f"{wd.get(path, 'absent')}")
        return f"{len(got)} saved arrays vs {len(want)} expected"

    def _restore_one(self, target_state: Any, step: int) -> Tuple[Any, dict]:
        path = paths.join(self.directory, str(step))
        check_meta(path)
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(target_state)),
                meta=ocp.args.JsonRestore()))
        except Exception as e:  # corrupt / truncated files surface as many error types
            mismatch = self._mismatch(step, target_state)
            if mismatch is not None:
                raise CheckpointError(
                    f"checkpoint {path} is incompatible with this run (a different model or "
                    f"optimizer): {mismatch}") from e
            raise CorruptCheckpointError(f"checkpoint {path} is corrupt or truncated: "
                                         f"{describe_error(e)}") from e
        got = jax.tree.structure(out.state)
        want = jax.tree.structure(target_state)
        if got != want:
            raise CheckpointError(f"checkpoint {path} has a different state structure than "
                                  f"this run expects: saved {got}, expected {want}")
        return out.state, dict(out.meta)

    def restore(self, target_state: Any, step: Optional[int] = None, *, fallback: bool = False,
                log: Callable[[str], None] = print) -> Tuple[Any, dict, int]:
        """Restores into the structure, shapes and shardings of ``target_state``.

        Returns (state, meta, step). Raises CheckpointError with one line naming the checkpoint
        and the problem: missing, corrupt / truncated (an array file, an empty or broken
        metadata file), or a different model / optimizer. ``step=None`` takes the latest; when
        that is corrupt, ``fallback=True`` reports it (``log``, one line), moves it to
        ``<run_dir>/corrupt_checkpoints/<step>`` and takes the newest intact earlier one;
        ``fallback=False`` raises, naming the intact step it could fall back to.
        """
        self.wait()
        with quiet_orbax():  # a corrupt file: orbax logs ~70 lines; the CheckpointError says it
            return self._restore(target_state, step, fallback=fallback, log=log)

    def _restore(self, target_state, step, *, fallback, log):
        if step is not None:
            if step not in self.all_steps():
                raise CheckpointError(f"checkpoint step {step} not found in {self.directory} "
                                      f"(available: {sorted(self.all_steps())})")
            return (*self._restore_one(target_state, step), int(step))
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        for i, s in enumerate(steps):
            try:
                state, meta = self._restore_one(target_state, s)
            except CorruptCheckpointError as e:  # (a mismatch propagates: earlier ones differ too)
                earlier = steps[i + 1:]
                if not fallback:
                    hint = (f"; --config.checkpoint.fallback=True resumes from the newest intact "
                            f"earlier one (of steps {sorted(earlier)})" if earlier
                            else "; no earlier checkpoint to fall back to")
                    raise CorruptCheckpointError(f"{e}{hint}") from None
                if not earlier:
                    raise CorruptCheckpointError(f"{e}; no earlier checkpoint to fall back "
                                                 "to") from None
                moved = self._set_aside(s)
                log(f"[jaxgrpo] {e}; moved it to {moved}, trying step {earlier[0]}")
                continue
            return state, meta, int(s)
        raise AssertionError("unreachable")

    def _set_aside(self, step: int) -> str:
        """Moves a corrupt checkpoint out of the manager's directory (so the steps after the
        fallback can be saved again) into <run_dir>/corrupt_checkpoints/<step>[-n]."""
        root = paths.join(paths.dirname(self.directory), "corrupt_checkpoints")
        paths.makedirs(root)
        dest, n = paths.join(root, str(step)), 1
        while paths.exists(dest):
            dest, n = paths.join(root, f"{step}-{n}"), n + 1
        src = paths.join(self.directory, str(step))
        if paths.is_url(src):
            paths._fs(src).mv(src, dest, recursive=True)
        else:
            shutil.move(src, dest)
        self._mgr.reload()
        return dest

    def close(self) -> None:
        """Waits for a background save (SaveError when it failed), then closes orbax."""
        if self._closed:
            return
        self.wait()
        self._closed = True
        with quiet_orbax():
            self._mgr.close()
