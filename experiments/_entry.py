"""The one ending of every runnable ``experiments`` module:

    if __name__ == "__main__":
        main_entry(main)

so the process set-up that every command needs before JAX starts lives in one place.
"""
from __future__ import annotations

import sys
from typing import Any, Callable


def main_entry(main: Callable[[], Any], *, tune: bool = True, exit_status: bool = False) -> None:
    """Run ``main()`` as the process's entry point.

    tune: first install the CPU backend's settings (``jaxgrpo.cpu.install``: the XLA:CPU
        flags, a one-time restart of the same command line with the malloc tunable, and the
        warm-memory executable hook), which must happen before ``main`` starts a JAX backend. False for a command that runs the
        training in processes of its own (``experiments.race``) or restarts itself with other
        settings (``experiments.memory_plan``); such a command must not import JAX here either.
    exit_status: ``main()`` returns the process's exit status (``experiments.run``); otherwise
        its return value is ignored and the process exits 0 unless ``main`` raised.
    """
    if tune:
        from jaxgrpo.cpu import install

        install()  # XLA:CPU flags + huge pages (restarts the process once) + the warm-memory hook
    status = main()
    if exit_status:
        sys.exit(status)
