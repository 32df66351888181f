"""The hook every compiled executable of the training step and the evaluator goes through.

``jaxgrpo.step`` and ``jaxgrpo.evaluate`` pass their jitted functions through :func:`wrap`, and
``jaxgrpo.loop.Trainer.close`` calls :func:`release`. Both do nothing until an entry point sets
a wrapper (:func:`set_wrapper`): the library itself knows no backend- or machine-specific
wrapper. The CPU backend's (``jaxgrpo.cpu.warm_memory``) is set by ``jaxgrpo.cpu.install``.

A wrapper is ``wrapper(fn, *, donates_state: bool) -> callable`` with ``fn``'s signature and
outputs; ``donates_state`` says that ``fn`` donates its first argument and returns the new one
first (the jitted update).
"""
from __future__ import annotations

from typing import Callable, Optional

__all__ = ["set_wrapper", "wrap", "release"]

_wrapper: Optional[Callable] = None
_release: Optional[Callable[[], None]] = None


def set_wrapper(fn: Optional[Callable], *, release: Optional[Callable[[], None]] = None) -> None:
    """Make ``fn`` the wrapper of every later :func:`wrap` (None: no wrapper) and ``release``
    what :func:`release` calls (None: nothing). Functions wrapped before keep their wrapper."""
    global _wrapper, _release
    _wrapper, _release = fn, release


def wrap(fn: Callable, *, donates_state: bool = False) -> Callable:
    """``fn`` behind the wrapper that was set (``fn`` itself when none was)."""
    if _wrapper is None:
        return fn
    return _wrapper(fn, donates_state=donates_state)


def release() -> None:
    """Let the wrapper give back what it holds between calls (e.g. memory); a no-op without
    one. Called when a run ends."""
    if _release is not None:
        _release()
