"""Roofline time estimates: a table of accelerators and the arithmetic that turns a compiled
program's ``cost_analysis()`` (FLOPs, bytes accessed) into a roofline estimate of its run time.

The table (``DEVICES``) holds each device's published peak dense bf16 matrix rate, HBM bandwidth
and memory, per chip (no sparsity, no boost beyond the datasheet):

* ``h100``: NVIDIA H100 SXM5 80 GB. NVIDIA H100 Tensor Core GPU datasheet: bf16 Tensor Core
  1,979 TFLOP/s *with sparsity*, so 989.4 dense; HBM3 3.35 TB/s; 80 GB.
* ``h200``: NVIDIA H200 SXM 141 GB. NVIDIA H200 Tensor Core GPU datasheet: bf16 1,979 TFLOP/s
  with sparsity (989.4 dense, the H100's); HBM3e 4.8 TB/s; 141 GB.
* ``a100-40gb``: NVIDIA A100 SXM4 40 GB. NVIDIA A100 Tensor Core GPU datasheet: bf16 312 TFLOP/s
  dense; HBM2 1,555 GB/s; 40 GB.
* ``a100-80gb``: NVIDIA A100 SXM4 80 GB, same datasheet: bf16 312 TFLOP/s dense; HBM2e
  2,039 GB/s; 80 GB.
* ``v5p``: Google Cloud TPU v5p, one chip. Cloud TPU documentation, "TPU v5p": 459 TFLOP/s bf16,
  HBM2e 2,765 GB/s, 95 GB per chip.

The arithmetic (all per device, since an SPMD-partitioned program's ``cost_analysis()`` is one
device's module):

* ``roofline_seconds(flops, bytes, device) = max(flops / peak, bytes / bandwidth)``: no schedule
  of that program runs faster on that device (METHOD: the larger of the two times is the floor).
* a training step = the update + the sampling of the configured lengths; sampling = one prefill
  + ``max_new_tokens`` decode steps (each a roofline bound of its own: decode is bytes-bound).
* run time = steps x step time; device-hours = run hours x devices; cost = device-hours x price.

The estimate is unvalidated until the device check measures the same programs (and XLA:CPU's
bytes count its bf16 -> f32 weight upcasts, so it is not a strict lower bound)
(``experiments.device_check``): it leaves out the host (rewards, tokenising), launch gaps,
communication between devices and the compiler's distance from the roofline.

XLA's ``cost_analysis()`` counts the body of a loop (``lax.scan``, ``while``) once, whatever its
trip count, so a scanned layer stack reports one layer. ``unrolled_scans()`` makes every
``jax.lax.scan`` traced inside it unroll, so that the count is exact; the callers compile at two
small depths that way and extrapolate linearly to the model's depth (``linear_in_layers``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

__all__ = ["DEVICES", "Device", "StepCost", "cost_of", "device", "linear_in_layers",
           "roofline_seconds", "run_estimate", "unrolled_scans"]


@dataclasses.dataclass(frozen=True)
class Device:
    """One accelerator chip: ``peak_flops`` dense bf16 FLOP/s, ``hbm_bytes_per_s``, ``memory_bytes``."""
    name: str
    peak_flops: float
    hbm_bytes_per_s: float
    memory_bytes: float
    source: str


DEVICES: Dict[str, Device] = {d.name: d for d in (
    Device("h100", 989.4e12, 3.35e12, 80e9, "NVIDIA H100 SXM5 datasheet (1979 TFLOP/s sparse)"),
    Device("h200", 989.4e12, 4.8e12, 141e9, "NVIDIA H200 SXM datasheet"),
    Device("a100-40gb", 312e12, 1.555e12, 40e9, "NVIDIA A100 SXM4 40GB datasheet"),
    Device("a100-80gb", 312e12, 2.039e12, 80e9, "NVIDIA A100 SXM4 80GB datasheet"),
    Device("v5p", 459e12, 2.765e12, 95e9, "Cloud TPU v5p documentation (per chip)"),
)}


def device(name: str) -> Device:
    """The table's entry for ``name``; a one-line ValueError naming the known devices otherwise."""
    try:
        return DEVICES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown device {name!r}: one of {', '.join(DEVICES)}") from None


def roofline_seconds(flops: float, bytes_accessed: float, dev: Device) -> float:
    """Lower bound of one program's run time on ``dev``: max(flops / peak, bytes / bandwidth)."""
    return max(flops / dev.peak_flops, bytes_accessed / dev.hbm_bytes_per_s)


def cost_of(compiled) -> Tuple[float, float]:
    """(flops, bytes accessed) of a compiled JAX program (``jax.stages.Compiled``), per device.

    ``cost_analysis()`` returns a dict (a list of one dict in older jax); keys absent from it
    count as 0."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):  # jax < 0.4.30 returned [dict]; harmless to keep
        ca = ca[0] if ca else {}
    ca = ca or {}
    return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))


@contextlib.contextmanager
def unrolled_scans():
    """While active, ``jax.lax.scan`` unrolls its loop fully unless the caller set ``unroll``.

    For cost counting only (XLA's cost analysis counts a loop body once): trace and compile the
    program inside it, at a small depth. Patches the ``jax.lax.scan`` attribute, which is what
    the decoder's layer stack calls at trace time; loops built by ``fori_loop`` / ``while_loop``
    (e.g. the blockwise attention's key blocks) are not affected."""
    import jax

    original = jax.lax.scan

    @functools.wraps(original)
    def scan(*args, **kwargs):
        kwargs.setdefault("unroll", True)
        return original(*args, **kwargs)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = original


def linear_in_layers(points: Sequence[Tuple[int, Tuple[float, float]]], depth: int
                     ) -> Tuple[float, float]:
    """(flops, bytes) at ``depth`` from two (layers, (flops, bytes)) points, linear in layers
    (exact for an unrolled stack of identical layers: fixed part + layers x one layer)."""
    (l0, (f0, b0)), (l1, (f1, b1)) = sorted(points)
    if l0 == l1:
        raise ValueError("linear_in_layers needs two different depths")
    at = lambda y0, y1: y1 + (y1 - y0) / (l1 - l0) * (depth - l1)
    return at(f0, f1), at(b0, b1)


@dataclasses.dataclass(frozen=True)
class StepCost:
    """Per-device (flops, bytes) of one training step's programs.

    ``update``: the whole update (all micro-batches and iterations of one step); ``prefill``: the
    sampler's prompt pass; ``decode``: ONE decode step, run ``new_tokens`` times per step."""
    update: Tuple[float, float]
    prefill: Tuple[float, float]
    decode: Tuple[float, float]
    new_tokens: int


def run_estimate(cost: StepCost, dev: Device, *, steps: int, devices: int,
                 price_per_device_hour: Optional[float] = None) -> Dict[str, float]:
    """Roofline estimate of a run: seconds of the update, of sampling, of a step; hours of the
    run, device-hours and (with a price per device-hour) the cost.

    sampling = prefill + new_tokens x decode step; step = update + sampling;
    run_hours = steps x step / 3600; device_hours = run_hours x devices."""
    update_s = roofline_seconds(*cost.update, dev)
    prefill_s = roofline_seconds(*cost.prefill, dev)
    decode_s = roofline_seconds(*cost.decode, dev)
    sampling_s = prefill_s + cost.new_tokens * decode_s
    step_s = update_s + sampling_s
    run_h = steps * step_s / 3600.0
    out = dict(update_s=update_s, prefill_s=prefill_s, decode_step_s=decode_s,
               sampling_s=sampling_s, step_s=step_s, run_hours=run_h,
               device_hours=run_h * devices,
               update_bound="flops" if cost.update[0] / dev.peak_flops >=
               cost.update[1] / dev.hbm_bytes_per_s else "bytes",
               decode_bound="flops" if cost.decode[0] / dev.peak_flops >=
               cost.decode[1] / dev.hbm_bytes_per_s else "bytes")
    if price_per_device_hour is not None:
        out["cost"] = out["device_hours"] * price_per_device_hour
    return out


def format_estimate(name: str, est: Mapping[str, float], cost: StepCost, *, steps: int,
                    price: Optional[float] = None) -> Iterable[str]:
    """The printed lines for one device; the last two are machine-readable:
    ``step_seconds_estimate[<name>]=<s>`` and ``run_hours_estimate[<name>]=<h>``."""
    dev = device(name)
    yield (f"  {name}: {dev.peak_flops / 1e12:.1f} TFLOP/s bf16, "
           f"{dev.hbm_bytes_per_s / 1e12:.3f} TB/s, {dev.memory_bytes / 1e9:.0f} GB ({dev.source})")
    yield (f"    update   {cost.update[0]:.4g} FLOP, {cost.update[1]:.4g} B per device -> "
           f"{est['update_s']:.4g} s ({est['update_bound']}-bound)")
    yield (f"    prefill  {cost.prefill[0]:.4g} FLOP, {cost.prefill[1]:.4g} B -> "
           f"{est['prefill_s']:.4g} s; decode step {cost.decode[0]:.4g} FLOP, "
           f"{cost.decode[1]:.4g} B -> {est['decode_step_s']:.4g} s ({est['decode_bound']}-bound)"
           f" x {cost.new_tokens} tokens = sampling {est['sampling_s']:.4g} s")
    yield (f"    step {est['step_s']:.4g} s x {steps} steps = {est['run_hours']:.4g} h, "
           f"{est['device_hours']:.4g} device-hours"
           + (f", cost {est['cost']:.4g} at {price:g} per device-hour" if "cost" in est else ""))
    yield f"step_seconds_estimate[{name}]={est['step_s']:.6g}"
    yield f"run_hours_estimate[{name}]={est['run_hours']:.6g}"
