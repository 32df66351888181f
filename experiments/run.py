"""Train a policy from an experiment config.

    python -m experiments.run                                   # the embedded default
    python -m experiments.run --config experiments/configs/dra_grpo.py --config.steps=50
    python -m experiments.run --help                            # every key: type, default, doc

Any field can be overridden with ``--config.<key>=<value>``; an unknown key or a bad value fails
at start with one line naming it, before any model is loaded (``jaxgrpo.experiment.validate``
with ``inputs=True``: data files, the task, the mesh). The resolved config is saved once as
``<run_dir>/config.json``; running again with the same ``run_dir`` resumes the run (see
``jaxgrpo.run_dir`` for what a resume may change).

Compiled programs are cached across runs (JAX's persistent compilation cache, in
``~/.cache/jaxgrpo/xla``; ``JAXGRPO_COMPILATION_CACHE=<dir>`` moves it, ``=0`` turns it off), so a
second run of the same config skips most of its compilation.

Exit codes (``jaxgrpo.errors``):

* 0  -- finished: all ``config.steps`` trained, final evaluation and summary.json written.
* 75 -- stopped by SIGTERM / SIGINT (or preempted) after saving a checkpoint; run the same
  command again to resume. (75 = EX_TEMPFAIL, "try again later", so a scheduler can requeue.)
* 2  -- a config or input error (bad key or value, missing data file or --config file, an
  unreadable model.path, a run directory that cannot be resumed with this config): one line on
  stderr, nothing trained.
* 1  -- any other error (a corrupt checkpoint, non-finite metrics, a checkpoint that could not
  be written, ...): one line on stderr for the errors jaxgrpo raises itself, a traceback for
  anything unexpected. An error exit first finishes an in-flight background save and names the
  newest checkpoint that is actually committed.
* 130 -- a second Ctrl-C / SIGTERM while the first one is being handled (nothing more is saved).

SIGTERM / SIGINT stop a run at any phase: during training the current step finishes and a
checkpoint is saved; while loading, evaluating or saving the run stops at once (what was being
saved is finished first) -- both exit 75. A second process on the same run directory is refused
(exit 2) while the first holds its lock (``jaxgrpo.run_dir.RunLock``).
"""
from __future__ import annotations

import os
import sys

from experiments._entry import main_entry

DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
HELP_FLAGS = ("--help", "-h", "--helpfull", "-help")


def _one_line(e: BaseException) -> str:
    """The exception's text on one line, without the quotes a KeyError's str() wraps it in."""
    text = " ".join(str(e).replace("\\n", " ").split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text.strip()


def _unknown_key(argv) -> str:
    """The one-line message for the first ``--config.<key>`` override that names no key of the
    base config, with the nearest key as a suggestion; "" when every override names a key."""
    import difflib

    from jaxgrpo.config import flatten
    from jaxgrpo.experiment import base_config

    keys = set(flatten(base_config()))
    for a in argv:
        if not a.startswith("--config."):
            continue
        name = a[len("--config."):].split("=", 1)[0]
        if name not in keys:
            near = difflib.get_close_matches(name, sorted(keys), n=1, cutoff=0.6)
            hint = f"; did you mean config.{near[0]}?" if near else "; --help lists the keys"
            return f"unknown key config.{name}{hint}"
    return ""


def _config_file(argv) -> str:
    """The --config=FILE / --config FILE argument (DEFAULT when there is none)."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return DEFAULT


def parse_config(argv, *, inputs: bool = True):
    """The config named by ``--config`` (default: configs/default.py) with its overrides
    applied and validated (``inputs``: also the files, task and devices it names). Exits with
    code 2 and a one-line message naming a bad key, value or file."""
    from absl import flags
    from ml_collections import config_flags

    from jaxgrpo.experiment import validate
    from jaxgrpo.errors import EXIT_CONFIG_ERROR

    path = _config_file(argv[1:])
    if not os.path.isfile(path.split(":", 1)[0]):
        # ml_collections would raise an OSError traceback from deep inside absl.
        print(f"config error: --config file not found: {path}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    fv = flags.FlagValues()
    try:
        # ml_collections applies --config.* overrides while defining the flag.
        holder = config_flags.DEFINE_config_file("config", DEFAULT, "experiment config file",
                                                 flag_values=fv, lock_config=True)
        rest = fv(argv)[1:]
        if rest:
            raise ValueError(f"unexpected arguments {rest}; use --config=FILE and "
                             "--config.<key>=<value> (--help lists the keys)")
        config = holder.value
        validate(config, inputs=inputs)
    except (AttributeError, KeyError, TypeError, ValueError, OSError, SyntaxError,
            flags.Error) as e:
        unknown = _unknown_key(argv[1:]) if isinstance(e, (AttributeError, KeyError)) else ""
        print(f"config error: {unknown or _one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    return config


def enable_compilation_cache(env=os.environ) -> str:
    """JAX's persistent compilation cache for repeated runs of the same config: a second run
    loads the sampler's and the update's executables instead of compiling them. The directory
    is ``$JAXGRPO_COMPILATION_CACHE`` (default ``~/.cache/jaxgrpo/xla``); set it to ``0`` or
    ``off`` to disable. Returns the directory ("" when off)."""
    import jax

    path = env.get("JAXGRPO_COMPILATION_CACHE", os.path.join("~", ".cache", "jaxgrpo", "xla"))
    if path.lower() in ("0", "off", "false", "no", ""):
        return ""
    path = os.path.expanduser(path)
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:  # a cache is an optimisation: run without it, say so in one line
        print(f"[jaxgrpo] compilation cache {path} is not writable ({e.strerror or e}): running "
              "without it; set JAXGRPO_COMPILATION_CACHE=<dir> (or =0)", file=sys.stderr)
        return ""
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def main(argv=None) -> int:
    from jaxgrpo import run_dir

    run_dir.quiet_third_party()  # before transformers is imported
    argv = list(sys.argv if argv is None else argv)
    from jaxgrpo import errors

    if any(a in HELP_FLAGS for a in argv[1:]):
        from jaxgrpo.experiment import describe_config
        rest = [a for a in argv if a not in HELP_FLAGS]
        config = parse_config(rest, inputs=False) if len(rest) > 1 else None
        print(__doc__.strip() + "\n\n" + describe_config(config))
        return errors.EXIT_OK
    # Multi-host (SLURM, Open MPI, TPU pod slices, JAX_COORDINATOR_ADDRESS): initialise JAX's
    # distributed runtime before anything touches a backend; a no-op on one machine.
    from jaxgrpo.cpu import warm_memory
    from jaxgrpo.sharding import initialize_distributed
    try:  # an environment variable with a bad value: one line before anything loads
        warm_memory.switch_mode()
        initialize_distributed()
    except errors.ConfigError as e:
        print(f"config error: {_one_line(e)}", file=sys.stderr)
        return errors.EXIT_CONFIG_ERROR
    enable_compilation_cache()
    config = parse_config(argv)
    from jaxgrpo.loop import stop_signals

    with stop_signals():
        return _train(config)


def _committed_text(trainer) -> str:
    ckpt = getattr(trainer, "ckpt", None) if trainer is not None else None
    step = ckpt.committed_step() if ckpt is not None else None
    return (f"the newest committed checkpoint is step {step} in {ckpt.directory}"
            if step is not None else "no checkpoint was committed")


def _train(config) -> int:
    """Builds and trains the run; maps every way it can end to an exit code and one line."""
    from jaxgrpo import errors
    from jaxgrpo.checkpoint import SaveError
    from jaxgrpo.loop import StopRequested, Trainer

    trainer = None
    try:
        try:  # building the run: a bad input (config value, data file, model file, run directory)
            trainer = Trainer(config)
        except SaveError as e:  # the checkpoint directory cannot be created
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return errors.EXIT_ERROR
        except (errors.ConfigError, errors.CheckpointError) as e:
            print(f"config error: {_one_line(e)}", file=sys.stderr)
            return errors.EXIT_CONFIG_ERROR
        try:  # training: a corrupt checkpoint to resume from, non-finite metrics
            try:
                out = trainer.train()
            finally:
                trainer.close()
        except errors.ConfigError as e:  # found at the first step (e.g. dynamic sampling)
            print(f"config error: {_one_line(e)}", file=sys.stderr)
            return errors.EXIT_CONFIG_ERROR
        except (errors.CheckpointError, FloatingPointError) as e:
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return errors.EXIT_ERROR
        except OSError as e:  # a host file of the run directory could not be written
            print(f"error: writing the run directory failed: {_one_line(e)} "
                  f"({getattr(e, 'filename', '') or ''}); {_committed_text(trainer)}; free space "
                  "or fix the permissions, then run the same command to resume", file=sys.stderr)
            return errors.EXIT_ERROR
    except StopRequested as e:
        if trainer is not None:
            trainer.close()
        print(f"[jaxgrpo] stopped by signal {e.signum} before the run finished; "
              f"{_committed_text(trainer)}; run the same command to resume", file=sys.stderr)
        return errors.EXIT_STOPPED
    except KeyboardInterrupt:
        print("[jaxgrpo] interrupted twice: stopped at once; run the same command to resume "
              "from the newest committed checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    if trainer.stopped_early:
        print(f"[jaxgrpo] stopped early with a checkpoint; run the same command to resume. "
              f"run directory: {out}")
        return errors.EXIT_STOPPED
    print(f"[jaxgrpo] run directory: {out}")
    return errors.EXIT_OK


EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for a process stopped by Ctrl-C


if __name__ == "__main__":
    main_entry(main, exit_status=True)
