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

``WarmReserve`` holds that memory between executions instead: during an execution it lets go of
as much as the execution needs, paced by the process's resident size so that each freed chunk
is taken up within milliseconds (freed in one block of gigabytes it was handed to the
hypervisor before the execution reached it), and afterwards it takes the same amount back from
the pages the execution just freed. Peak memory stays what the largest execution needs (the
reserve never holds more than that, and holds nothing of it while that execution runs); what it
adds is the memory held between executions. How much each jitted function needs is read from
XLA itself: ``fn.lower(*args).compile().memory_analysis()`` (temporaries + outputs not aliased
to donated inputs), asked once per argument signature after the first call, when that
compilation is already in JAX's cache (no second compile; tests/test_step.py counts them).
Whether lending pays is measured too: taking the memory back costs a fresh-page supply of its
own, so :class:`WarmCall` lends only to a function whose second call, run without the reserve,
spent enough kernel time per GiB of need (the 135M update does; the tiny bench's short steps,
whose freed pages are still warm when reused, do not).

:func:`wrap` puts a jitted function behind the process's reserve when :func:`enabled` (else
returns it unchanged): ``JAXGRPO_WARM_MEMORY`` = ``auto`` (default: on for the CPU backend,
under ``jaxgrpo.cpu.process``'s CPU settings switch, where a balloon device reports free
pages), ``1`` (on wherever the backend is the CPU) or ``0`` (off). :func:`release` gives the memory back (the
Trainer does on ``close``, through ``jaxgrpo.executables.release``). Entry points install
:func:`wrap` as the executable hook of ``jaxgrpo.executables`` (``jaxgrpo.cpu.install``).
"""
from __future__ import annotations

import mmap
import os
import resource
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional

import jax
import numpy as np

from jaxgrpo.cpu.process import tuning_enabled
from jaxgrpo.errors import ConfigError

__all__ = ["SWITCH", "CHUNK_BYTES", "AHEAD_BYTES", "PAYS_KERNEL_S_PER_GB", "PAYS_MIN_KERNEL_S",
           "free_page_reporting", "switch_mode", "enabled", "WarmReserve", "reserve", "release",
           "needed_bytes", "WarmCall", "wrap"]

SWITCH = "JAXGRPO_WARM_MEMORY"
CHUNK_BYTES = 64 << 20  # the reserve's unit: 32 huge pages
AHEAD_BYTES = 256 << 20  # paced lending: at most this much handed out and not yet taken up
POLL_S = 0.002  # paced lending: how often the process's resident size is read
PAYS_KERNEL_S_PER_GB = 0.5  # WarmCall lends where a call without it spent this much kernel time
PAYS_MIN_KERNEL_S = 1.0  # ... per GiB of need, and at least this much in all
_VIRTIO_BALLOON_ID = 5  # virtio device id of a memory balloon
_F_REPORTING = 5  # VIRTIO_BALLOON_F_REPORTING, a bit of the device's feature string
_PAGE = 4096


def _rss_bytes(fd: int) -> int:
    """This process's resident set size, read from ``fd`` (open on ``/proc/self/statm``)."""
    try:
        return int(os.pread(fd, 128, 0).split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


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


def switch_mode(env=os.environ) -> str:
    """The ``JAXGRPO_WARM_MEMORY`` setting, lower-cased; raises :class:`ConfigError` (a
    ValueError naming the variable) on a value other than auto / 1 / 0 / on / off / true /
    false. The CLI asks before it loads anything."""
    mode = env.get(SWITCH, "auto").strip().lower()
    if mode not in ("auto", "1", "0", "on", "off", "true", "false"):
        raise ConfigError(f"{SWITCH}={env.get(SWITCH)!r}: use auto, 1 or 0")
    return mode


def enabled(env=os.environ, backend: Optional[str] = None) -> bool:
    """Whether :func:`wrap` lends memory: ``JAXGRPO_WARM_MEMORY`` (``auto`` | ``1`` | ``0``), on
    the CPU backend only (an accelerator's memory is its own). Raises ConfigError (naming the
    variable) on another value."""
    mode = switch_mode(env)
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
    def lend(self, nbytes: int, ahead: Optional[int] = None,
             poll_s: float = POLL_S) -> Iterator[None]:
        """Free ``nbytes`` (rounded up to chunks; as much as is held) for the body, then hold
        ``max(held before, nbytes)`` again (taking back what the body freed; the reserve grows
        to ``nbytes`` the first time).

        ``ahead=None`` frees it all before the body. Otherwise the memory is handed out as the
        body takes it up: ``ahead`` bytes before the body, then a thread reads the process's
        resident size every ``poll_s`` (backing off while nothing is taken up) and frees one
        more chunk whenever less than ``ahead`` of what it freed is still untouched. Memory freed
        in one block of gigabytes is reported to the hypervisor before an execution reaches it
        (measured here: the tiny update 1.5 -> 3.1-3.6 s with 2 GB freed up front); paced, each
        chunk is taken up within milliseconds of its release.
        """
        n = -(-max(int(nbytes), 0) // self.chunk_bytes)
        with self._lock:
            target = max(len(self._chunks), n)
        fd = None
        if ahead is not None:
            try:
                fd = os.open("/proc/self/statm", os.O_RDONLY)
            except OSError:  # nothing to pace by: lend up front
                pass
        stop = threading.Event()
        given = [0]

        def give_one() -> bool:
            with self._lock:
                if given[0] >= n or not self._chunks:
                    return False
                self._give(1)
                given[0] += 1
                return True

        base = _rss_bytes(fd) if fd is not None else 0
        while given[0] * self.chunk_bytes < (ahead if fd is not None else n * self.chunk_bytes):
            if not give_one():
                break

        def pace() -> None:
            # untaken = base - rss: what was freed and the body has not touched yet. While the
            # body takes nothing up, the reads back off to 32 x poll_s (fewer wake-ups).
            wait = poll_s
            while not stop.is_set():
                if base - _rss_bytes(fd) < ahead:
                    if not give_one():
                        return
                    wait = poll_s
                else:
                    stop.wait(wait)
                    wait = min(2 * wait, 32 * poll_s)

        thread = None
        if fd is not None and given[0] < n:
            thread = threading.Thread(target=pace, name="warm-memory-pace", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            if fd is not None:
                os.close(fd)
            with self._lock:  # held again: max(held before, n)
                if not self.failed:
                    self._take(target - len(self._chunks))

    def release(self) -> None:
        """Give all held memory back to the kernel."""
        with self._lock:
            self._give(len(self._chunks))


_RESERVE = WarmReserve()


def reserve() -> WarmReserve:
    """The process's reserve (memory is the process's: one reserve for every wrapped function)."""
    return _RESERVE


def release() -> None:
    """Give the process's reserve back to the kernel (``jaxgrpo.loop.Trainer.close`` does, through
    ``jaxgrpo.executables.release``)."""
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
    """``fn(*args)`` (a jitted function with ``.lower``) run with the reserve's memory lent to it
    where that pays; a call that borrows (or is measured) blocks until its outputs are ready, so
    that the memory is taken back after the execution.

    Per argument signature: the first call (it compiles) lends whatever the reserve holds and
    then reads the call's need from XLA. The second runs without the reserve and measures the
    process's kernel time: lending costs about one fresh-page supply of the need per call (the
    reserve touches it again afterwards), so it is used for this signature only when that call
    spent at least ``min_kernel_s_per_gb`` seconds of kernel time per GiB of need and
    ``min_kernel_s`` in all (the thread pool's own system calls count too; measured here: the
    SmolLM2-135M update 2.5 s/GiB, 9.6 s, after a 10 s sampling phase, lent 1.1-1.7 s of kernel
    time instead of 8.6-9.6 s; its sampler 0.44 s, not lent; the tiny bench update 0.17 s,
    which lending made 1.3-2.2x slower). From the third call on the need is lent when it pays;
    otherwise only what the reserve already holds for other functions, up to the need, so that
    held memory never adds to a call's peak (except that one measured call's).

    ``donates_state``: ``fn`` donates its first argument and returns the new one first (as
    ``out[0]``), which stands in for the deleted input when the need is read after the call.
    """

    def __init__(self, fn: Callable, *, donates_state: bool = False,
                 warm: Optional[WarmReserve] = None,
                 min_kernel_s_per_gb: Optional[float] = None,
                 min_kernel_s: Optional[float] = None):
        self.fn = fn
        self.donates_state = donates_state
        self.warm = warm if warm is not None else _RESERVE
        self.min_kernel_s_per_gb = (PAYS_KERNEL_S_PER_GB if min_kernel_s_per_gb is None
                                    else float(min_kernel_s_per_gb))
        self.min_kernel_s = PAYS_MIN_KERNEL_S if min_kernel_s is None else float(min_kernel_s)
        self.needs: Dict[Any, int] = {}
        self.kernel_s: Dict[Any, float] = {}  # the measured call's kernel time, per signature
        self.lends: Dict[Any, bool] = {}  # whether lending pays, per signature

    def __getattr__(self, name):  # lower, _cache_size, ... of the wrapped function
        return getattr(self.fn, name)

    def _run(self, args, nbytes: int):
        if nbytes <= 0:  # nothing lent: as the plain function (asynchronous dispatch)
            return self.fn(*args)
        with self.warm.lend(nbytes, ahead=AHEAD_BYTES):
            return jax.block_until_ready(self.fn(*args))

    def __call__(self, *args):
        sig = _signature(args[1:] if self.donates_state else args)
        need = self.needs.get(sig)
        if need is None:  # compiles: lend all that is held (the reserve never adds to its peak)
            out = self._run(args, self.warm.held_bytes)
            after = ((out[0],) + tuple(args[1:])) if self.donates_state else args
            # The first call compiled it: lowering the same signature is a cache hit.
            self.needs[sig] = needed_bytes(self.fn.lower(*after).compile())
            return out
        lend = self.lends.get(sig)
        if lend is None:  # measure the kernel's page supply without the reserve
            k0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            out = jax.block_until_ready(self.fn(*args))
            kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - k0
            self.kernel_s[sig] = kernel
            self.lends[sig] = need > 0 and kernel >= max(self.min_kernel_s_per_gb * need / 2**30,
                                                         self.min_kernel_s)
            if self.lends[sig]:
                with self.warm.lend(need):  # fill the reserve while the freed pages are warm
                    pass
            return out
        return self._run(args, need if lend else min(need, self.warm.held_bytes))


def wrap(fn: Callable, *, donates_state: bool = False) -> Callable:
    """``WarmCall(fn)`` when :func:`enabled` and ``fn`` can be lowered (a ``jax.jit`` function,
    ``jaxgrpo.train.StateShardedJit``); otherwise ``fn`` itself."""
    if not hasattr(fn, "lower") or not enabled():
        return fn
    return WarmCall(fn, donates_state=donates_state)
