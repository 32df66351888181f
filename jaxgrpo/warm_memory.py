"""Warm host memory for XLA:CPU executions, on virtual machines that return free memory to the host.

XLA:CPU allocates each execution's temporaries afresh and frees them when it ends (glibc gives
the large blocks back to the kernel at once). On a virtual machine whose balloon device does
*free page reporting* (virtio-balloon ``VIRTIO_BALLOON_F_REPORTING``: Firecracker, QEMU/KVM and
cloud VMs with ballooning), the guest kernel hands memory that has stayed free for ~2 s back to
the hypervisor, and touching it again costs a hypervisor fault per page: measured on this
project's 2-core VM, 4.5 GiB of memory freed 3-8 s earlier took 5.2-7.7 s to touch again, the
same memory freed a moment before 0.23-0.36 s. A GRPO step alternates two long executions
(sampling ~11 s, the update ~17 s at SmolLM2-135M), so each found its pages handed back: the
135M update spent ~9 s of kernel time (2 cores) supplying its 3.5 GB of temporaries.

``WarmReserve`` holds that memory between executions instead: before an execution it lets go of
as much as the execution needs, so the execution's temporaries land on pages freed a moment
before, and afterwards it takes the same amount back from the pages the execution just freed.
Peak memory stays what the largest execution needs (the reserve never holds more than that,
and holds nothing of it while that execution runs); what it adds is the memory held between
executions. How much each jitted function needs is read from XLA itself:
``fn.lower(*args).compile().memory_analysis()`` (temporaries + outputs not aliased to donated
inputs), asked once per argument signature after the first call, when that compilation is
already in JAX's cache (no second compile; tests/test_step.py counts them).

:func:`wrap` puts a jitted function behind the process's reserve when :func:`enabled` (else
returns it unchanged): ``JAXGRPO_WARM_MEMORY`` = ``auto`` (default: on for the CPU backend, under
``jaxgrpo.runtime``'s CPU settings switch, where a balloon device reports free pages), ``1`` (on
wherever the backend is the CPU) or ``0`` (off). :func:`release` gives the memory back (the
Trainer does on ``close``).
"""
from __future__ import annotations

import mmap
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional

import jax
import numpy as np

from jaxgrpo.runtime import tuning_enabled

__all__ = ["SWITCH", "CHUNK_BYTES", "free_page_reporting", "enabled", "WarmReserve",
           "reserve", "release", "needed_bytes", "WarmCall", "wrap"]

SWITCH = "JAXGRPO_WARM_MEMORY"
CHUNK_BYTES = 64 << 20  # the reserve's unit: 32 huge pages
_VIRTIO_BALLOON_ID = 5  # virtio device id of a memory balloon
_F_REPORTING = 5  # VIRTIO_BALLOON_F_REPORTING, a bit of the device's feature string
_PAGE = 4096


def free_page_reporting(root: str = "/sys/bus/virtio/devices") -> bool:
    """Whether a virtio balloon device here has free page reporting negotiated (sysfs ``device``
    0x0005 and bit 5 of its ``features`` string, which lists bit 0 first)."""
    try:
        names = os.listdir(root)
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(root, name, "device")) as f:
                if int(f.read().strip(), 16) != _VIRTIO_BALLOON_ID:
                    continue
            with open(os.path.join(root, name, "features")) as f:
                bits = f.read().strip()
        except (OSError, ValueError):
            continue
        if len(bits) > _F_REPORTING and bits[_F_REPORTING] == "1":
            return True
    return False


def enabled(env=os.environ, backend: Optional[str] = None) -> bool:
    """Whether :func:`wrap` lends memory: ``JAXGRPO_WARM_MEMORY`` (``auto`` | ``1`` | ``0``), on
    the CPU backend only (an accelerator's memory is its own). Raises ValueError (naming the
    variable) on another value."""
    mode = env.get(SWITCH, "auto").strip().lower()
    if mode not in ("auto", "1", "0", "on", "off", "true", "false"):
        raise ValueError(f"{SWITCH}={env.get(SWITCH)!r}: use auto, 1 or 0")
    if mode in ("0", "off", "false"):
        return False
    if (backend or jax.default_backend()) != "cpu":
        return False
    if mode in ("1", "on", "true"):
        return True
    return tuning_enabled(env) and free_page_reporting()


class WarmReserve:
    """Memory held in ``CHUNK_BYTES`` anonymous mappings (huge pages where the kernel gives them)
    and lent out around executions: ``with reserve.lend(n): run()``."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES):
        self.chunk_bytes = int(chunk_bytes)
        self._chunks: List[mmap.mmap] = []
        self._lock = threading.Lock()
        self.failed = False  # the kernel refused a mapping: the reserve stopped growing

    @property
    def held_bytes(self) -> int:
        return len(self._chunks) * self.chunk_bytes

    def _take(self, n: int) -> None:
        for _ in range(n):
            try:
                m = mmap.mmap(-1, self.chunk_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            except OSError:
                self.failed = True
                return
            if hasattr(mmap, "MADV_HUGEPAGE"):
                try:
                    m.madvise(mmap.MADV_HUGEPAGE)
                except OSError:
                    pass
            touch = np.frombuffer(m, np.uint8)
            touch[::_PAGE] = 1  # fault every page in now, while the freed pages are warm
            del touch
            self._chunks.append(m)

    def _give(self, n: int) -> None:
        for _ in range(min(n, len(self._chunks))):
            self._chunks.pop().close()  # munmap: the pages go back to the kernel, warm

    @contextmanager
    def lend(self, nbytes: int) -> Iterator[None]:
        """Free ``nbytes`` (rounded up to chunks; as much as is held) for the body, then hold
        ``nbytes`` again (taking back what the body freed; the reserve grows to ``nbytes`` the
        first time)."""
        n = -(-max(int(nbytes), 0) // self.chunk_bytes)
        with self._lock:
            self._give(n)
        try:
            yield
        finally:
            with self._lock:  # held again: max(held before, n)
                if not self.failed:
                    self._take(n)

    def release(self) -> None:
        """Give all held memory back to the kernel."""
        with self._lock:
            self._give(len(self._chunks))


_RESERVE = WarmReserve()


def reserve() -> WarmReserve:
    """The process's reserve (memory is the process's: one reserve for every wrapped function)."""
    return _RESERVE


def release() -> None:
    """Give the process's reserve back to the kernel (``jaxgrpo.loop.Trainer.close`` does)."""
    _RESERVE.release()


def needed_bytes(compiled) -> int:
    """Fresh host bytes one execution of ``compiled`` (a ``jax.stages.Compiled``) allocates:
    temporaries plus outputs that do not reuse a donated input."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return max(int(m.temp_size_in_bytes) + int(m.output_size_in_bytes)
               - int(m.alias_size_in_bytes), 0)


def _signature(args) -> Any:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None))
                          if hasattr(x, "shape") else (type(x).__name__, x) for x in leaves)


class WarmCall:
    """``fn(*args)`` (a jitted function with ``.lower``) run with the reserve's memory lent to it;
    blocks until the outputs are ready (the memory is taken back after the execution).

    ``donates_state``: ``fn`` donates its first argument and returns the new one first (as
    ``out[0]``), which stands in for the deleted input when the need is read after the call.
    """

    def __init__(self, fn: Callable, *, donates_state: bool = False,
                 warm: Optional[WarmReserve] = None):
        self.fn = fn
        self.donates_state = donates_state
        self.warm = warm if warm is not None else _RESERVE
        self.needs: Dict[Any, int] = {}

    def __getattr__(self, name):  # lower, _cache_size, ... of the wrapped function
        return getattr(self.fn, name)

    def __call__(self, *args):
        sig = _signature(args[1:] if self.donates_state else args)
        need = self.needs.get(sig)
        # Need not known yet (first call of this signature): lend all that is held, so that the
        # reserve never adds to the call's peak.
        with self.warm.lend(self.warm.held_bytes if need is None else need):
            out = jax.block_until_ready(self.fn(*args))
        if need is None:
            after = ((out[0],) + tuple(args[1:])) if self.donates_state else args
            # The first call compiled it: lowering the same signature is a cache hit.
            self.needs[sig] = needed_bytes(self.fn.lower(*after).compile())
            with self.warm.lend(self.needs[sig]):  # fill the reserve while the pages are warm
                pass
        return out


def wrap(fn: Callable, *, donates_state: bool = False) -> Callable:
    """``WarmCall(fn)`` when :func:`enabled` and ``fn`` can be lowered (a ``jax.jit`` function,
    ``jaxgrpo.train.StateShardedJit``); otherwise ``fn`` itself."""
    if not hasattr(fn, "lower") or not enabled():
        return fn
    return WarmCall(fn, donates_state=donates_state)
