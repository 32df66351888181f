"""Process settings for the CPU path, applied by the command-line entry points before JAX starts.

Two settings, each measured on this project's 2-core CPU machines (AMD EPYC, Zen 5) on the
SmolLM2-135M update of the whole-step benchmark (4 prompts x G = 8 x 128 tokens; README,
"Measured"):

* ``XLA_CPU_FLAGS``: XLA:CPU hands only matrix products to its YNNPACK library
  (``--xla_cpu_experimental_ynn_fusion_type=dot``). By default jax 0.10's XLA:CPU also emits
  reductions and elementwise fusions through YNNPACK, and there the log-softmax / entropy
  reduction over a [32, 128, 49,152] logits block ran on one thread for 5.0 s of a 24.5 s update;
  XLA's own loop emitter splits it over the cores. Only which kernels compute the same HLO
  changes (float32 rounding of reductions; the loss agreed to 1e-6 relative).
* ``MALLOC_TUNABLE`` (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``): glibc backs its large (mmap'd)
  allocations with transparent huge pages. XLA:CPU allocates each execution's temporaries afresh,
  and the 135M update touched ~11 GB of new 4 KiB pages per step (2.9 million page faults, ~10 s
  of kernel time over both cores); with 2 MiB pages that is ~6 thousand faults. glibc reads its
  tunables only when a process starts, so :func:`tune_process` starts the same command again
  (``os.execv``) with the variable set: once, before anything heavy is imported. It is only done
  where it can help: Linux with glibc >= 2.35 and transparent huge pages in ``madvise`` mode (in
  ``always`` mode large mappings get them anyway; in ``never`` mode they cannot).

Together: the 135M update (no remat) 24.0 -> 19.7 s (flag) -> 14.8 s (both); whole GRPO steps of
``experiments.race`` 6.62 -> 3.03 s at the tiny shape, 37.0 -> 32.9 s at 135M with remat.

A third CPU measure acts between executions rather than at process start:
:mod:`jaxgrpo.cpu.warm_memory` (host memory held between XLA:CPU executions on a VM that hands
free memory back to its hypervisor), under the same ``JAXGRPO_CPU_TUNING`` switch.

Neither is applied when an accelerator plugin (CUDA, ROCm, TPU) is installed, when the variable
is already set by the user (the user's value wins), or with ``JAXGRPO_CPU_TUNING=0``. In a
notebook call ``tune_process(reexec=False)`` before the first JAX operation: it sets the XLA flag
only (a kernel cannot be restarted from inside).
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Callable, Dict, Mapping, MutableMapping, Optional, Sequence

__all__ = ["XLA_CPU_FLAGS", "MALLOC_TUNABLE", "SWITCH", "tuning_enabled", "with_xla_flags",
           "with_malloc_tunable", "hugepages_help", "tuned_environment", "tune_process"]

SWITCH = "JAXGRPO_CPU_TUNING"  # "0" / "off": leave the process as it is
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)
MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"
_REEXEC_MARK = "JAXGRPO_CPU_TUNING_REEXEC"  # set in the restarted process: never restart twice
# JAX's accelerator plugins: with one installed the run is not (only) on the CPU.
ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu")


def tuning_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """False when ``JAXGRPO_CPU_TUNING`` is 0 / off / false / no, or an accelerator plugin of
    JAX is installed."""
    if env.get(SWITCH, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return not any(importlib.util.find_spec(m) is not None for m in ACCELERATOR_MODULES)


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0].lstrip("-")


def with_xla_flags(current: str, flags: Sequence[str] = XLA_CPU_FLAGS) -> str:
    """``current`` (an ``XLA_FLAGS`` value) with each of ``flags`` appended unless a flag of the
    same name is already there (the user's setting wins)."""
    present = {_flag_name(f) for f in current.split()}
    extra = [f for f in flags if _flag_name(f) not in present]
    return " ".join([current.strip(), *extra]).strip()


def with_malloc_tunable(current: str, tunable: str = MALLOC_TUNABLE) -> Optional[str]:
    """``current`` (a ``GLIBC_TUNABLES`` value, colon-separated) with ``tunable`` added, or None
    when a value for the same tunable is already set."""
    name = tunable.split("=", 1)[0]
    items = [t for t in current.split(":") if t]
    if any(t.split("=", 1)[0] == name for t in items):
        return None
    return ":".join([*items, tunable])


def _glibc_version() -> Optional[tuple]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if name == "glibc" and m else None


def hugepages_help(thp_path: str = "/sys/kernel/mm/transparent_hugepage/enabled") -> bool:
    """Whether ``glibc.malloc.hugetlb=1`` changes anything here: Linux, glibc >= 2.35 (the
    tunable's first release) and transparent huge pages in ``madvise`` mode."""
    if not sys.platform.startswith("linux"):
        return False
    version = _glibc_version()
    if version is None or version < (2, 35):
        return False
    try:
        with open(thp_path) as f:
            mode = f.read()
    except OSError:
        return False
    return "[madvise]" in mode


def tuned_environment(env: Mapping[str, str] = os.environ) -> Dict[str, str]:
    """The environment variables to set for the CPU settings (none when ``tuning_enabled`` is
    False): ``XLA_FLAGS`` with ``XLA_CPU_FLAGS`` added, and ``GLIBC_TUNABLES`` with the malloc
    tunable where :func:`hugepages_help` and the user has not set that tunable. A process started
    with them (a subprocess, a test worker) has both in force."""
    if not tuning_enabled(env):
        return {}
    out = {"XLA_FLAGS": with_xla_flags(env.get("XLA_FLAGS", ""))}
    tunables = with_malloc_tunable(env.get("GLIBC_TUNABLES", ""))
    if tunables is not None and hugepages_help():
        out["GLIBC_TUNABLES"] = tunables
    return out


def tune_process(*, reexec: bool = True, env: MutableMapping[str, str] = os.environ,
                 argv: Optional[Sequence[str]] = None,
                 execv: Callable[[str, Sequence[str]], None] = os.execv) -> bool:
    """Apply :func:`tuned_environment` to this process.

    Call it first thing in a command's ``if __name__ == "__main__":`` block: the XLA flags take
    effect only if JAX has not started a backend yet, and the malloc tunable (glibc reads it at
    process start) restarts the process: ``execv(sys.executable, argv)``, ``argv`` defaulting to
    ``sys.orig_argv``, the same ``python -m module --flags`` command line, once. Never call it
    with ``reexec`` from code that runs inside another program (a test, a notebook): it would
    replace that program; ``reexec=False`` sets the XLA flags only.

    Returns True when settings were applied (after a restart ``execv`` does not return).
    """
    changes = tuned_environment(env)
    if not changes:
        return False
    env["XLA_FLAGS"] = changes["XLA_FLAGS"]
    if reexec and "GLIBC_TUNABLES" in changes and not env.get(_REEXEC_MARK):
        env["GLIBC_TUNABLES"] = changes["GLIBC_TUNABLES"]
        env[_REEXEC_MARK] = "1"
        args = list(sys.orig_argv if argv is None else argv)
        sys.stdout.flush()
        sys.stderr.flush()
        execv(sys.executable, [sys.executable, *args[1:]])
    return True
