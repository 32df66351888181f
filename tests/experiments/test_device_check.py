"""experiments.device_check --smoke: every part at tiny shapes on the CPU, as a subprocess.

Checks that every part finishes (ok, or skipped where it needs a GPU), that the JSON and the
Markdown table are written, and the numbers the parts compute against independent ones: the
bf16 attention errors are those of bf16 rounding (well under 2e-2, above 1e-4), the update's
compiled FLOPs lie between 6 N T (the weights' forward + backward) and 16 N T (remat adds one
forward, the reference policy one more; attention at these shapes is small), and the predicted
peak is positive.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "experiments.device_check", "--smoke", "--out",
                        str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    report = json.loads((out / "device_check.json").read_text())
    return dict(rc=p.returncode, stdout=p.stdout + p.stderr, report=report,
                md=(out / "device_check.md").read_text())


def test_every_part_finishes_and_the_table_is_written(smoke):
    parts = smoke["report"]["parts"]
    assert list(parts) == ["backend", "attention", "update3", "update6", "sampler",
                           "default_run"], smoke["stdout"][-3000:]
    for name, r in parts.items():
        assert r["status"].startswith(("ok", "skipped")), (name, r)
    assert smoke["rc"] == 0
    for name in parts:
        assert f"| {name} |" in smoke["md"]
    assert "skipped: no GPU" in parts["attention"]["status"]


def test_the_parts_numbers(smoke):
    parts = smoke["report"]["parts"]
    errs = parts["attention"]["rel_err_vs_f32_naive"]
    for impl in ("naive", "blockwise"):
        for key, e in errs[impl].items():
            assert 1e-4 < e < 2e-2, (impl, key, e)
    u = parts["update3"]
    assert 6 * u["n_params"] * u["tokens_per_update"] <= u["compiled_flops"] \
        <= 16 * u["n_params"] * u["tokens_per_update"]
    assert u["predicted_peak_bytes"] > 0 and u["step_s"] > 0
    assert parts["update6"]["grad_accum"] == 1 and u["grad_accum"] == 2
    s = parts["sampler"]
    assert s["decode_tokens_per_s"] > 0
    d = parts["default_run"]
    assert d["steps"] == 2 and d["first_step_s"] > 0
