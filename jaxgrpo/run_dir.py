"""A run directory is one run: what is written there, when, and what a resume may change.

Layout (written by ``jaxgrpo.loop.Trainer``)::

    <run_dir>/config.json          the resolved config, written ONCE, when the run starts fresh
    <run_dir>/config_changes.jsonl one row per resume that changed a safe key (see below)
    <run_dir>/checkpoints/<step>/  orbax checkpoints (jaxgrpo.checkpoint)
    <run_dir>/metrics.jsonl        one row per logged train step / evaluation ("step", "kind")
    <run_dir>/samples.jsonl        completions of every log.samples_every-th step ("step" from 1)
    <run_dir>/eval_step<N>.jsonl   per-prompt records of the evaluation at step N
    <run_dir>/summary.json         every evaluation of the run, written when it finishes

Rules (each one is a test in tests/test_faults.py):

* Starting: an absent or empty directory starts fresh (config.json is written before any model
  is built). A non-empty one is resumed when ``checkpoint.resume=True`` (the default) and
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
import sys
import time
from typing import Any, Dict, Tuple

import ml_collections as mc

from jaxgrpo.errors import ConfigError

__all__ = ["SAFE_ON_RESUME", "RunDir", "resolve_path", "prepare", "diff_configs",
           "record_changes", "rewind", "evaluations", "Progress", "quiet_third_party"]

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


@dataclasses.dataclass
class RunDir:
    """The outcome of :func:`prepare`: the directory, whether it started fresh, and the safe
    changes of a resume (``{key: (saved, requested)}``)."""

    path: str
    fresh: bool
    changes: Dict[str, Tuple[Any, Any]] = dataclasses.field(default_factory=dict)


def resolve_path(c: mc.ConfigDict) -> str:
    """The absolute run directory of ``c``: ``run_dir``, or runs/<name>-<timestamp>."""
    if c.run_dir:
        return os.path.abspath(c.run_dir)
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
    names = sorted(n for n in os.listdir(path) if not n.startswith("."))
    extra = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + extra


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
    """A fresh run's config.json (atomically: never half-written); nothing for a resume."""
    if not rd.fresh:
        return
    os.makedirs(rd.path, exist_ok=True)
    tmp = os.path.join(rd.path, CONFIG + ".tmp")
    with open(tmp, "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(rd.path, CONFIG))


def inspect(c: mc.ConfigDict) -> RunDir:
    """``prepare``'s decision alone: fresh or resume (with the safe changes), or ConfigError.
    Reads the run directory; writes nothing."""
    path = resolve_path(c)
    if os.path.isfile(path):
        raise ConfigError(f"config.run_dir={path!r} is a file, not a directory")
    entries = ([n for n in os.listdir(path) if not n.startswith(".")]
               if os.path.isdir(path) else [])
    if not entries:
        return RunDir(path, fresh=True)
    if not c.checkpoint.resume:
        raise ConfigError(
            f"run directory {path} already holds a run ({_listing(path)}) and "
            "config.checkpoint.resume=False: pass another --config.run_dir (or none, for a new "
            "timestamped one), delete the directory, or resume it with "
            "--config.checkpoint.resume=True")
    cfg_path = os.path.join(path, CONFIG)
    if not os.path.isfile(cfg_path):
        raise ConfigError(
            f"run directory {path} is not empty ({_listing(path)}) but has no {CONFIG}: it is "
            "not a jaxgrpo run; pass another --config.run_dir")
    try:
        with open(cfg_path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError(f"expected a JSON object, got {type(saved).__name__}")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: cannot read the saved run config ({e}); the run cannot "
                          "be resumed safely: pass another --config.run_dir") from None
    safe, unsafe = diff_configs(saved, c)
    if unsafe:
        listed = "; ".join(f"{k}: {a!r} (saved) -> {b!r} (requested)"
                           for k, (a, b) in unsafe.items())
        why = (" (steps changes the learning-rate schedule unless optim.schedule='constant')"
               if "steps" in unsafe else "")
        raise ConfigError(
            f"cannot resume {path} with a changed model, data or optimisation: {listed}{why}. "
            f"Start a new run (another --config.run_dir) or drop these overrides; keys that may "
            f"change on resume: {', '.join(SAFE_ON_RESUME)}")
    return RunDir(path, fresh=False, changes=safe)


def record_changes(rd: RunDir, restored_step: int, log=print) -> None:
    """Appends the safe changes of a resume to config_changes.jsonl and says so (one line)."""
    if not rd.changes:
        return
    row = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
           "restored_step": int(restored_step),
           "changes": {k: {"saved": a, "requested": b} for k, (a, b) in rd.changes.items()}}
    with open(os.path.join(rd.path, CHANGES), "a") as f:
        f.write(json.dumps(row) + "\n")
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in rd.changes.items())
    log(f"[jaxgrpo] resuming at step {restored_step} with changed settings: {listed} "
        f"(recorded in {CHANGES}; {CONFIG} keeps the first values)")


def _rows(path: str):
    """(byte offset, parsed row or None for a malformed line) of each line of a JSONL file."""
    out, offset = [], 0
    with open(path, "rb") as f:
        for line in f:
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
    if not os.path.isfile(path):
        return 0
    rows = _rows(path)
    kept = [r for r in rows if r[1] is not None and keep(r[1])]
    dropped = len(rows) - len(kept)
    if not dropped:
        return 0
    if [r[0] for r in kept] == [r[0] for r in rows[:len(kept)]]:
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

    out = {METRICS: _keep_prefix(os.path.join(path, METRICS), keep_metric),
           SAMPLES: _keep_prefix(os.path.join(path, SAMPLES), lambda r: r.get("step", -1) <= step)}
    n_files = 0
    for name in os.listdir(path):
        if name.startswith("eval_step") and name.endswith(".jsonl"):
            try:
                n = int(name[len("eval_step"):-len(".jsonl")])
            except ValueError:
                continue
            if n > step or (n == step and redo_eval):
                os.remove(os.path.join(path, name))
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
    out: Dict[int, Dict[str, Any]] = {}
    mpath = os.path.join(path, METRICS)
    if not os.path.isfile(mpath):
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
