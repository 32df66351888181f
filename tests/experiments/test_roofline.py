"""experiments.roofline: the arithmetic on a program of known cost, and memory_plan --device.

A matmul [M, K] x [K, N] does 2 M N K FLOPs and must read both inputs and write the output; a
scan of L such matmuls does L times that, which XLA's cost analysis reports only with the scan
unrolled (``unrolled_scans``); the roofline time is then checked against the hand formula.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import roofline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
M, K, N = 128, 256, 64


def _matmul_cost():
    x, w = jax.ShapeDtypeStruct((M, K), jnp.float32), jax.ShapeDtypeStruct((K, N), jnp.float32)
    return roofline.cost_of(jax.jit(jnp.matmul).lower(x, w).compile())


def test_matmul_flops_bytes_and_roofline_time():
    flops, nbytes = _matmul_cost()
    assert flops == 2 * M * N * K
    assert nbytes >= 4 * (M * K + K * N + M * N)
    dev = roofline.device("a100-40gb")
    assert roofline.roofline_seconds(flops, nbytes, dev) == pytest.approx(
        max(2 * M * N * K / 312e12, nbytes / 1.555e12))
    big = roofline.roofline_seconds(1e15, 1.0, roofline.device("h100"))
    assert big == pytest.approx(1e15 / 989.4e12)  # FLOP-bound
    assert roofline.roofline_seconds(1.0, 4.8e12, roofline.device("H200")) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown device 'b200'"):
        roofline.device("b200")


def test_unrolled_scans_count_every_layer_and_extrapolate_exactly():
    def stack(ws, x):
        return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)[0]

    def cost(layers, unrolled):
        ws = jax.ShapeDtypeStruct((layers, K, K), jnp.float32)
        x = jax.ShapeDtypeStruct((M, K), jnp.float32)
        if unrolled:
            with roofline.unrolled_scans():
                return roofline.cost_of(jax.jit(stack).lower(ws, x).compile())
        return roofline.cost_of(jax.jit(stack).lower(ws, x).compile())

    assert cost(4, unrolled=False)[0] == 2 * M * K * K  # the loop body counted once
    assert jax.lax.scan.__name__ == "scan"
    pts = [(1, cost(1, True)), (2, cost(2, True))]
    assert roofline.linear_in_layers(pts, 6)[0] == pytest.approx(6 * 2 * M * K * K)
    assert cost(6, True)[0] == pytest.approx(6 * 2 * M * K * K)


def test_run_estimate_arithmetic():
    cost = roofline.StepCost(update=(3.12e14, 1.0), prefill=(1.0, 1.555e9),
                             decode=(1.0, 3.11e9), new_tokens=100)
    est = roofline.run_estimate(cost, roofline.device("a100-40gb"), steps=360, devices=4,
                                price_per_device_hour=2.0)
    assert est["update_s"] == pytest.approx(1.0) and est["update_bound"] == "flops"
    assert est["sampling_s"] == pytest.approx(1e-3 + 100 * 2e-3)
    assert est["step_s"] == pytest.approx(1.201)
    assert est["run_hours"] == pytest.approx(360 * 1.201 / 3600)
    assert est["device_hours"] == pytest.approx(4 * est["run_hours"])
    assert est["cost"] == pytest.approx(2 * est["device_hours"])


def test_memory_plan_prints_the_estimate_lines(tmp_path):
    shape = tmp_path / "tiny.json"
    shape.write_text(json.dumps(dict(
        model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=128,
        tie_word_embeddings=False, eos_token_id=1, pad_token_id=0)))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    p = subprocess.run([sys.executable, "-m", "experiments.memory_plan", "--mesh", "1,1,1",
                        "--shape", str(shape), "--skip-sampler", "--device", "h100",
                        "--device", "a100-40gb", "--price", "2",
                        "--config.train.prompts_per_step=2", "--config.sampling.max_new_tokens=8",
                        "--config.data.max_prompt_tokens=8"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert re.fullmatch(r"peak_gb_per_device=[0-9.eE+-]+", lines[-1])
    est = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^(step_seconds_estimate\[\w[\w-]*\]|run_hours_estimate\[\w[\w-]*\])=([0-9.eE+-]+)$",
        p.stdout, re.M)}
    assert set(est) == {"step_seconds_estimate[h100]", "run_hours_estimate[h100]",
                        "step_seconds_estimate[a100-40gb]", "run_hours_estimate[a100-40gb]"}
    for dev in ("h100", "a100-40gb"):  # run hours = steps (15, the default) x step seconds
        assert est[f"run_hours_estimate[{dev}]"] == pytest.approx(
            15 * est[f"step_seconds_estimate[{dev}]"] / 3600, rel=1e-4)
    # the A100 is slower on both ceilings
    assert est["step_seconds_estimate[a100-40gb]"] > est["step_seconds_estimate[h100]"]
    i = lines.index(next(x for x in lines if x.startswith("run_hours_estimate[a100-40gb]")))
    assert i < len(lines) - 1
