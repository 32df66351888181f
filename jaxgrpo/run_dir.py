"""A run directory is one run: what is written there, when, and what a resume may change.

Layout (written by ``jaxgrpo.loop.Trainer``)::

    <run_dir>/config.json          the resolved config, written ONCE, when the run starts fresh
    <run_dir>/inputs.json          the data's fingerprint: each data file's size and sha256, or
                                   the reasoning-gym task, options, seed, sizes and version
    <run_dir>/.jaxgrpo.lock        the writer's lock (pid, host, start time): see RunLock
    <run_dir>/config_changes.jsonl one row per resume that changed a safe key (see below)
    <run_dir>/checkpoints/<step>/  orbax checkpoints (jaxgrpo.checkpoint)
    <run_dir>/metrics.jsonl        one row per logged train step / evaluation ("step", "kind")
    <run_dir>/samples.jsonl        completions of every log.samples_every-th step ("step" from 1)
    <run_dir>/eval_step<N>.jsonl   per-prompt records of the evaluation at step N
    <run_dir>/summary.json         every evaluation of the run, written when it finishes

Rules (each one is a test in tests/integration/test_faults.py and tests/test_run_dir.py):

* One writer: process 0 holds an exclusive lock on the directory for the run's life (a
  second process is refused in one line naming the holder's pid and host, exit code 2; a dead
  holder's lock is taken over). See :class:`RunLock` (an OS lock locally, a lease on a URL).
* Starting: an absent or empty directory starts fresh. config.json and inputs.json are written
  after every check that can run before the model loads (``jaxgrpo.loop.preflight``), before
  any model is built. A directory whose run never committed a checkpoint is not locked to its
  config: the Trainer restarts it from step 0 with the requested one (recorded in
  config_changes.jsonl).
* Inputs: a resume whose data file (size, sha256) or reasoning-gym prompts differ from
  inputs.json is refused in one line naming the file. A non-empty one is resumed when ``checkpoint.resume=True`` (the default) and
  refused with one line when ``checkpoint.resume=False`` -- two runs are never mixed in one
  directory.
* Resuming compares the requested config with the saved config.json. Keys that only change how
  long the run goes or what it reports may differ (:data:`SAFE_ON_RESUME`); the differences are
  printed and appended to config_changes.jsonl, and config.json keeps the first sitting's values.
  Any other difference (model, data, rewards, advantages, loss, optimiser, seed) is refused with
  one line naming the keys, saved and requested values, BEFORE anything is written.
  ``steps`` is safe only with ``optim.schedule='constant'`` (a decaying schedule is a function
  of the total steps).
* Resume rewrites nothing it did not redo: :func:`rewind` drops the metrics / samples rows and
  eval_step files of steps after the restored checkpoint (left by a kill, possibly with a
  half-written last line), so every step appears once. summary.json is built from the evaluations
  in metrics.jsonl (:func:`evaluations`), so it keeps those of earlier sittings (step 0 too).

The functions here are pure-ish (they read and write files in the run directory, nothing else)
and are called from the Trainer by one-line hooks.
"""
from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Dict, Optional, Tuple

import ml_collections as mc

from jaxgrpo.errors import ConfigError

__all__ = ["SAFE_ON_RESUME", "RunDir", "resolve_path", "prepare", "diff_configs",
           "record_changes", "rewind", "evaluations", "Progress", "quiet_third_party",
           "RunLock", "RunDirLockedError", "LOCK"]

SAFE_ON_RESUME = (
    "steps",  # run longer (or stop earlier); only with a constant learning-rate schedule
    "name",  # a label (the default run_dir name, W&B run name)
    "run_dir",  # the directory may have been moved or copied
    "eval.*",  # what is evaluated and how often (earlier evaluations stay as they were)
    "log.*",  # what is logged where
    "checkpoint.every", "checkpoint.keep", "checkpoint.resume", "checkpoint.fallback",
    "checkpoint.async_save",
    "rewards.verifier_workers",  # process count of math-verify: the same scores
    "mesh.*",  # the device layout (resume on another slice); results equal up to float order
    "sampling.unroll_layers",  # how the decode loop runs the layers: the same tokens
)
"""Config keys that may differ between the saved config.json and a resume (fnmatch patterns).
Everything else alters the model, the data or the optimisation and is refused."""

CONFIG = "config.json"
CHANGES = "config_changes.jsonl"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
LOCK = ".jaxgrpo.lock"  # hidden: a directory holding only the lock is still an empty one


class RunDirLockedError(ConfigError):
    """Another live process holds the run directory's lock (exit code 2, like a config error:
    nothing was written)."""


def _holder_text(path: str) -> str:
    try:
        rec = json.loads(_read(path) or "{}")
    except ValueError:
        rec = {}
    return (f"pid {rec.get('pid', '?')} on host {rec.get('host', '?')}"
            + (f", since {rec['started']}" if rec.get("started") else ""))


def _read(path: str) -> str:
    from jaxgrpo import paths
    try:
        return paths.read_text(path)
    except (OSError, FileNotFoundError):
        return ""


class RunLock:
    """One writer per run directory: an exclusive lock held by process 0 for the run's life.

    Local directory: ``fcntl.flock`` on ``<run_dir>/.jaxgrpo.lock``, which records the holder's
    pid, host and start time. The kernel drops the lock when its process dies (kill -9, a
    crash), so a stale lock is taken over without any check; :meth:`release` (or process exit)
    frees it. On a URL (gs://, s3://) there is no OS lock: the same file is a lease, its
    ``heartbeat`` rewritten every :attr:`HEARTBEAT_S` seconds by a daemon thread; another
    process refuses while the heartbeat is younger than :attr:`STALE_S`, and takes over an
    older one (a dead holder). Two processes starting within the same instant on a bucket can
    both win (object stores have no compare-and-swap here): the lease guards against the common
    case, a second run started on a directory in use.
    """

    HEARTBEAT_S = 30.0
    STALE_S = 180.0

    def __init__(self, run_dir: str):
        from jaxgrpo import paths
        self.run_dir = run_dir
        self.path = paths.join(run_dir, LOCK)
        self._fd: Optional[int] = None
        self._stop: Optional[threading.Event] = None
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": datetime.datetime.now().isoformat(timespec="seconds")}

    def _refused(self) -> RunDirLockedError:
        return RunDirLockedError(
            f"run directory {self.run_dir} is in use by another jaxgrpo process "
            f"({_holder_text(self.path)}; lock file {self.path}): wait for it to finish, stop "
            "it, or pass another --config.run_dir")

    def acquire(self) -> "RunLock":
        from jaxgrpo import paths
        try:
            paths.makedirs(self.run_dir)
        except OSError as e:
            raise ConfigError(f"config.run_dir={self.run_dir!r}: cannot create the run "
                              f"directory ({e.strerror or e}); pass a writable "
                              "--config.run_dir") from None
        if paths.is_url(self.path):
            return self._acquire_lease()
        import fcntl
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"config.run_dir={self.run_dir!r}: cannot write into the run "
                              f"directory ({e.strerror or e}); pass a writable "
                              "--config.run_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._refused() from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self.record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def _acquire_lease(self) -> "RunLock":
        from jaxgrpo import paths
        text = _read(self.path)
        if text:
            try:
                rec = json.loads(text)
                age = time.time() - float(rec.get("heartbeat", 0))
            except (ValueError, TypeError):
                age = float("inf")
            if age < self.STALE_S:
                raise self._refused()
        self._write_lease()
        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(self.HEARTBEAT_S):
                try:
                    self._write_lease()
                except Exception:  # noqa: BLE001 - a missed beat; the next one may pass
                    pass

        threading.Thread(target=beat, name="jaxgrpo-run-lock", daemon=True).start()
        return self

    def _write_lease(self) -> None:
        from jaxgrpo import paths
        paths.write_text(self.path, json.dumps({**self.record, "heartbeat": time.time()}) + "\n")

    def release(self) -> None:
        """Frees the lock (idempotent)."""
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._stop is not None:
            self._stop.set()
            self._stop = None
            try:  # a released lease: the next run need not wait for it to go stale
                from jaxgrpo import paths
                paths.remove(self.path)
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@dataclasses.dataclass
class RunDir:
    """The outcome of :func:`inspect`: the directory, whether it started fresh, and the safe
    changes of a resume (``{key: (saved, requested)}``). ``restart``: the directory's earlier
    run never committed a checkpoint, so it starts again from step 0 and its config.json and
    inputs.json are rewritten with the requested config (its changes, safe or not, in
    ``changes``)."""

    path: str
    fresh: bool
    changes: Dict[str, Tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    restart: bool = False


INPUTS = "inputs.json"


def resolve_path(c: mc.ConfigDict) -> str:
    """The run directory of ``c``: ``run_dir`` (absolute; a URL as it is), or
    runs/<name>-<timestamp>."""
    from jaxgrpo import paths
    if c.run_dir:
        return paths.resolve(c.run_dir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.abspath(os.path.join("runs", f"{c.name}-{stamp}"))


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (dict, mc.ConfigDict)):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not (
            isinstance(a, bool) or isinstance(b, bool)):
        return float(a) == float(b)  # JSON writes 1.0 as 1 sometimes
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def diff_configs(saved: dict, requested: mc.ConfigDict) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
    """``(safe, unsafe)`` differences ``{key: (saved, requested)}`` between a saved config dict
    and the requested config. A key the saved config lacks (written by an older jaxgrpo) counts
    as its ``base_config()`` default."""
    from jaxgrpo.experiment import base_config

    old = _flat(saved)
    new = _flat(requested.to_dict())
    defaults = _flat(base_config().to_dict())
    safe, unsafe = {}, {}
    for key in sorted(set(old) | set(new)):
        a = old.get(key, defaults.get(key))
        b = new.get(key, defaults.get(key))
        if _same(a, b):
            continue
        ok = any(fnmatch.fnmatchcase(key, pat) for pat in SAFE_ON_RESUME)
        if key == "steps" and new.get("optim.schedule") != "constant":
            ok = False  # the learning rate at each step depends on the total
        (safe if ok else unsafe)[key] = (a, b)
    return safe, unsafe


def _listing(path: str, limit: int = 4) -> str:
    from jaxgrpo import paths
    names = sorted(n for n in paths.listdir(path) if not n.startswith("."))
    extra = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + extra


# ----------------------------------------------------------------------------- input fingerprint


def _file_print(path: str) -> Dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a data file (read in 1 MiB chunks)."""
    import hashlib

    from jaxgrpo import paths
    h = hashlib.sha256()
    with paths.open_file(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": path, "size": paths.getsize(path), "sha256": h.hexdigest()}


def fingerprint(c: mc.ConfigDict) -> Dict[str, Any]:
    """What the run's prompts are made of: each data file's size and content hash (sha256), or
    the reasoning-gym task, its options, seed, sizes and the generator's version. Written to
    <run_dir>/inputs.json with config.json; a resume whose inputs differ is refused."""
    d = c.data
    if d.source == "file":
        out = {"data.path": _file_print(d.path)}
        if d.eval_path:
            out["data.eval_path"] = _file_print(d.eval_path)
        return out
    try:
        import importlib.metadata as md
        version = md.version("reasoning_gym")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        version = None
    return {"reasoning_gym": {"task": d.task, "task_kwargs": d.task_kwargs, "seed": c.seed,
                              "train_size": d.train_size, "eval_size": d.eval_size,
                              "version": version}}


def diff_inputs(saved: Dict[str, Any], now: Dict[str, Any]) -> list:
    """One description per input that differs between the saved and the current fingerprint."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if key.startswith("data.") and a and b:
            if a.get("path") != b.get("path"):
                continue  # a moved file is config.data.path's change (refused there)
            what = ("its size changed: %s -> %s bytes" % (a.get("size"), b.get("size"))
                    if a.get("size") != b.get("size") else "its content changed (sha256 "
                    f"{str(a.get('sha256'))[:12]}... -> {str(b.get('sha256'))[:12]}...)")
            out.append(f"config.{key}={b['path']!r}: the file differs from the one the run "
                       f"started with; {what}")
        elif key == "reasoning_gym" and a and b:
            changed = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
            out.append("the reasoning-gym prompts differ from the ones the run started with: "
                       + ", ".join(f"{k} {x!r} -> {y!r}" for k, (x, y) in sorted(changed.items())))
        else:
            out.append(f"{key}: {a!r} (saved) -> {b!r} (now)")
    return out


# ----------------------------------------------------------------------------- start / resume


def prepare(c: mc.ConfigDict) -> RunDir:
    """Decides, before anything heavy, whether ``c`` starts a fresh run or resumes one, and
    refuses what would mix or change a run (ConfigError, one line naming the directory and the
    keys). A fresh run gets its config.json here; a resume leaves config.json as it is. The two
    halves are ``inspect`` (decides, writes nothing) and ``write_config``: a multi-host run's
    processes all inspect the directory before process 0 writes into it."""
    rd = inspect(c)
    write_config(rd, c)
    return rd


def write_config(rd: RunDir, c: mc.ConfigDict) -> None:
    """A fresh (or restarted) run's config.json and inputs.json (atomically: never
    half-written); nothing for a resume."""
    from jaxgrpo import paths
    if not rd.fresh and not rd.restart:
        return
    try:
        paths.makedirs(rd.path)
        paths.write_atomic(paths.join(rd.path, INPUTS), json.dumps(fingerprint(c), indent=2))
        paths.write_atomic(paths.join(rd.path, CONFIG), c.to_json_best_effort(indent=2))
    except OSError as e:
        raise ConfigError(f"config.run_dir={rd.path!r}: cannot write {CONFIG} "
                          f"({e.strerror or e}); pass a writable --config.run_dir") from None


def committed_steps(path: str) -> list:
    """The steps of committed checkpoints in <path>/checkpoints (orbax names a committed one
    ``<step>``, an unfinished one ``<step>.orbax-checkpoint-tmp...``; on object storage a
    committed one also holds commit_success.txt)."""
    from jaxgrpo import paths
    root = paths.join(path, "checkpoints")
    out = []
    for name in paths.listdir(root):
        if name.isdigit() and (not paths.is_url(root) or paths.exists(
                paths.join(root, name, "commit_success.txt"))):
            out.append(int(name))
    return sorted(out)


def inspect(c: mc.ConfigDict, path: Optional[str] = None, *,
            unlock_unstarted: bool = False) -> RunDir:
    """``prepare``'s decision alone: fresh or resume (with the safe changes), or ConfigError.
    Reads the run directory; writes nothing. ``path``: the directory (default
    ``resolve_path(c)``). ``unlock_unstarted`` (the Trainer): a directory without a committed
    checkpoint holds nothing to resume, so a changed config restarts it (``restart``) instead
    of being refused."""
    from jaxgrpo import paths
    path = path or resolve_path(c)
    if paths.isfile(path):
        raise ConfigError(f"config.run_dir={path!r} is a file, not a directory")
    try:
        entries = [n for n in paths.listdir(path) if not n.startswith(".")]
    except OSError as e:
        raise ConfigError(f"config.run_dir={path!r}: cannot read the run directory "
                          f"({e.strerror or e})") from None
    if not entries:
        return RunDir(path, fresh=True)
    if not c.checkpoint.resume:
        raise ConfigError(
            f"run directory {path} already holds a run ({_listing(path)}) and "
            "config.checkpoint.resume=False: pass another --config.run_dir (or none, for a new "
            "timestamped one), delete the directory, or resume it with "
            "--config.checkpoint.resume=True")
    cfg_path = paths.join(path, CONFIG)
    if not paths.isfile(cfg_path):
        raise ConfigError(
            f"run directory {path} is not empty ({_listing(path)}) but has no {CONFIG}: it is "
            "not a jaxgrpo run; pass another --config.run_dir")
    try:
        saved = json.loads(paths.read_text(cfg_path))
        if not isinstance(saved, dict):
            raise ValueError(f"expected a JSON object, got {type(saved).__name__}")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: cannot read the saved run config ({e}); the run cannot "
                          "be resumed safely: pass another --config.run_dir") from None
    safe, unsafe = diff_configs(saved, c)
    started = bool(committed_steps(path)) or not unlock_unstarted
    if unsafe and not started:
        return RunDir(path, fresh=False, changes={**safe, **unsafe}, restart=True)
    if unsafe:
        listed = "; ".join(f"{k}: {a!r} (saved) -> {b!r} (requested)"
                           for k, (a, b) in unsafe.items())
        why = (" (steps changes the learning-rate schedule unless optim.schedule='constant')"
               if "steps" in unsafe else "")
        raise ConfigError(
            f"cannot resume {path} with a changed model, data or optimisation: {listed}{why}. "
            f"Start a new run (another --config.run_dir) or drop these overrides; keys that may "
            f"change on resume: {', '.join(SAFE_ON_RESUME)}")
    inputs_path = paths.join(path, INPUTS)
    if paths.isfile(inputs_path) and started:
        try:
            saved_inputs = json.loads(paths.read_text(inputs_path))
        except (OSError, ValueError):
            saved_inputs = None
        if isinstance(saved_inputs, dict):
            differ = diff_inputs(saved_inputs, fingerprint(c))
            if differ:
                raise ConfigError(
                    f"cannot resume {path} with different data: {'; '.join(differ)} (recorded "
                    f"in {INPUTS}). Start a new run (another --config.run_dir) or restore the "
                    "original data")
    return RunDir(path, fresh=False, changes=safe)


def record_changes(rd: RunDir, restored_step: int, log=print) -> None:
    """Appends the changes of a resume to config_changes.jsonl and says so (one line)."""
    from jaxgrpo import paths
    if not rd.changes:
        return
    row = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
           "restored_step": int(restored_step),
           "changes": {k: {"saved": a, "requested": b} for k, (a, b) in rd.changes.items()}}
    if rd.restart:
        row["restart"] = True
    f = paths.AppendFile(paths.join(rd.path, CHANGES))
    f.write(json.dumps(row) + "\n")
    f.close()
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in rd.changes.items())
    if rd.restart:
        log(f"[jaxgrpo] {rd.path}: its run never committed a checkpoint, so it starts again "
            f"from step 0 with the changed settings: {listed} ({CONFIG} rewritten; recorded in "
            f"{CHANGES})")
        return
    log(f"[jaxgrpo] resuming at step {restored_step} with changed settings: {listed} "
        f"(recorded in {CHANGES}; {CONFIG} keeps the first values)")


def _rows(path: str):
    """(byte offset, parsed row or None for a malformed line) of each line of a JSONL file."""
    from jaxgrpo import paths
    out, offset = [], 0
    with paths.open_file(path, "rb") as f:
        for line in f.read().splitlines(keepends=True):
            try:
                row = json.loads(line)
                row = row if isinstance(row, dict) else None
            except ValueError:
                row = None
            out.append((offset, row, line))
            offset += len(line)
    return out


def _keep_prefix(path: str, keep) -> int:
    """Removes the rows of a JSONL file for which ``keep(row)`` is false (and malformed lines);
    returns how many. The file is truncated in place (the trainer's append handle stays valid):
    when the dropped rows are the tail, by ``os.truncate``, else by rewriting it."""
    from jaxgrpo import paths
    if not paths.isfile(path):
        return 0
    rows = _rows(path)
    kept = [r for r in rows if r[1] is not None and keep(r[1])]
    dropped = len(rows) - len(kept)
    if not dropped:
        return 0
    if paths.is_url(path):  # an object is replaced whole
        paths.rewrite(path, b"".join(r[2] for r in kept))
    elif [r[0] for r in kept] == [r[0] for r in rows[:len(kept)]]:
        os.truncate(path, rows[len(kept)][0])
    else:
        with open(path, "r+b") as f:
            f.seek(0)
            f.truncate()
            f.write(b"".join(r[2] for r in kept))
    return dropped


def rewind(path: str, step: int, *, redo_eval: bool, log=print) -> Dict[str, int]:
    """Makes the run directory hold the run as of checkpoint ``step``, before training goes on.

    Drops rows of metrics.jsonl / samples.jsonl with a step after ``step`` (and malformed,
    half-written lines), and eval_step<N>.jsonl files with N > ``step``. ``redo_eval``: the
    evaluation at ``step`` itself will run again (step 0 of a fresh start, or the final one), so
    its row and file go too. Returns the counts dropped per file."""
    def keep_metric(r):
        s = r.get("step", -1)
        return s < step or (s == step and not (redo_eval and r.get("kind") == "eval"))

    from jaxgrpo import paths
    out = {METRICS: _keep_prefix(paths.join(path, METRICS), keep_metric),
           SAMPLES: _keep_prefix(paths.join(path, SAMPLES), lambda r: r.get("step", -1) <= step)}
    n_files = 0
    for name in paths.listdir(path):
        if name.startswith("eval_step") and name.endswith(".jsonl"):
            try:
                n = int(name[len("eval_step"):-len(".jsonl")])
            except ValueError:
                continue
            if n > step or (n == step and redo_eval):
                paths.remove(paths.join(path, name))
                n_files += 1
    out["eval_step files"] = n_files
    if any(out.values()):
        listed = ", ".join(f"{v} {k} rows" if k != "eval_step files" else f"{v} {k}"
                           for k, v in out.items() if v)
        log(f"[jaxgrpo] resuming at step {step}: dropped {listed} of work after the checkpoint "
            "(it is redone now)")
    return out


def evaluations(path: str) -> Dict[int, Dict[str, Any]]:
    """``{step: metrics}`` of every evaluation row in metrics.jsonl (the last row per step)."""
    from jaxgrpo import paths
    out: Dict[int, Dict[str, Any]] = {}
    mpath = paths.join(path, METRICS)
    if not paths.isfile(mpath):
        return out
    for _, row, _ in _rows(mpath):
        if row is not None and row.get("kind") == "eval" and "step" in row:
            out[int(row["step"])] = {k: v for k, v in row.items() if k not in ("step", "kind")}
    return dict(sorted(out.items()))


class Progress:
    """One-line progress messages between start and the first step (and for saves):
    ``[jaxgrpo 12.3s] loading the model ...``; the time is since the Progress was made."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.stream = stream

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[jaxgrpo {time.perf_counter() - self.t0:6.1f}s] {msg}",
                  file=self.stream or sys.stdout, flush=True)


class _DropOrbaxNoise(logging.Filter):
    """Drops absl-logged WARNING / INFO records that come from orbax (e.g. "Item 'meta' was
    found in the checkpoint, but could not be restored", sharding notices); errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "orbax" not in record.pathname


def quiet_third_party() -> None:
    """Silences start-up noise that is not for a JAX user: transformers' "PyTorch was not
    found" advisory (only tokenizers are used) and orbax's absl warnings. Errors still show.
    Call before transformers is imported."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("absl", "orbax"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropOrbaxNoise) for f in lg.filters):
            lg.addFilter(_DropOrbaxNoise())
