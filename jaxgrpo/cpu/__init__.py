"""Settings for the CPU backend, applied by the command-line entry points (never by the library).

* :mod:`jaxgrpo.cpu.process`: process settings made before JAX starts (an XLA:CPU flag, glibc's
  huge-page tunable with one restart of the command): :func:`tune_process`.
* :mod:`jaxgrpo.cpu.warm_memory`: host memory held between XLA:CPU executions on a VM whose
  balloon device reports free pages, lent to the wrapped executables.

:func:`install` is the one call an entry point makes: it tunes the process, then sets
``warm_memory.wrap`` (and ``warm_memory.release``) as the hook of ``jaxgrpo.executables``,
through which the training step and the evaluator pass their compiled functions.
"""
from __future__ import annotations

from jaxgrpo import executables
from jaxgrpo.cpu import warm_memory
from jaxgrpo.cpu.process import tune_process

__all__ = ["tune_process", "install"]


def install(*, reexec: bool = True) -> bool:
    """Tune this process (:func:`tune_process`; ``reexec=False`` inside another program, e.g. a
    notebook: the XLA flag only) and install the warm-memory wrapper as the executable hook.
    The wrapper still decides per function whether to lend (``JAXGRPO_WARM_MEMORY``, the CPU
    backend). Returns what :func:`tune_process` returns (after a restart it does not return)."""
    tuned = tune_process(reexec=reexec)
    executables.set_wrapper(warm_memory.wrap, release=warm_memory.release)
    return tuned
