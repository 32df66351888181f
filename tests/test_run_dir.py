"""One writer per run directory, fingerprinted inputs, preflight before any write, an unstarted
run is not locked (issue 38, points 2-4)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from jaxgrpo import run_dir as rdir
from jaxgrpo.errors import EXIT_CONFIG_ERROR, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time; from jaxgrpo.run_dir import RunLock; l = RunLock(sys.argv[1])"
        ".acquire(); print('held', flush=True); time.sleep(600)")


def _holder(path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_process_is_refused_naming_dir_pid_host_and_a_dead_holder_is_taken_over(tmp_path):
    run = tmp_path / "run"
    p = _holder(run)
    try:
        with pytest.raises(rdir.RunDirLockedError) as e:
            rdir.RunLock(str(run)).acquire()
        msg = str(e.value)
        assert "\n" not in msg and str(run) in msg
        assert f"pid {p.pid} on host {socket.gethostname()}" in msg
    finally:
        p.kill()  # kill -9: the kernel drops the flock
        p.wait()
    lock = rdir.RunLock(str(run)).acquire()  # the stale lock is taken over
    try:
        rec = json.load(open(run / rdir.LOCK))
        assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname()
    finally:
        lock.release()
    assert sorted(os.listdir(run)) == [rdir.LOCK]  # hidden: the directory still counts empty
    assert rdir.inspect(_cfg(run)).fresh


def _cfg(run, **flat):
    from jaxgrpo.experiment import base_config
    c = base_config()
    c.run_dir = str(run)
    c.update_from_flattened_dict(flat)
    return c


def test_cli_on_a_locked_run_dir_exits_2_with_one_line(tmp_path):
    run = tmp_path / "run"
    p = _holder(run)
    try:
        r = subprocess.run([sys.executable, "-m", "experiments.run", f"--config.run_dir={run}",
                            "--config.model.random_init_layers=2"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    finally:
        p.kill()
        p.wait()
    assert r.returncode == EXIT_CONFIG_ERROR, r.stderr[-2000:]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"config error: run directory {run} is in use") and str(p.pid) in line
    assert sorted(os.listdir(run)) == [rdir.LOCK]  # nothing written by the second process


def test_lease_on_a_url_refuses_a_live_holder_and_takes_over_a_stale_one():
    url = f"memory://locks/run-{os.getpid()}-{time.time_ns()}"
    a = rdir.RunLock(url).acquire()
    try:
        with pytest.raises(rdir.RunDirLockedError, match=f"pid {os.getpid()}"):
            rdir.RunLock(url).acquire()
    finally:
        a._stop.set()  # a holder that died: no more heartbeats, its lease file stays
    from jaxgrpo import paths
    rec = json.loads(paths.read_text(url + "/" + rdir.LOCK))
    rec["heartbeat"] -= rdir.RunLock.STALE_S + 1
    paths.write_text(url + "/" + rdir.LOCK, json.dumps(rec))
    b = rdir.RunLock(url).acquire()
    b.release()
    assert not paths.exists(url + "/" + rdir.LOCK)


def _jsonl(path, n, start=0):
    path.write_text("".join(json.dumps({"problem": f"{i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(start, start + n)))
    return str(path)


def test_changed_data_file_is_refused_on_resume_naming_the_file(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", 12)
    run = tmp_path / "run"
    c = _cfg(run, **{"data.source": "file", "data.path": data, "data.eval_size": 2,
                     "eval.num_prompts": 2})
    rd = rdir.prepare(c)
    saved = json.load(open(run / rdir.INPUTS))["data.path"]
    import hashlib
    assert saved["size"] == os.path.getsize(data)
    assert saved["sha256"] == hashlib.sha256(open(data, "rb").read()).hexdigest()
    os.makedirs(run / "checkpoints" / "1")  # the run has committed a step
    assert not rdir.inspect(c).fresh  # the same data resumes
    text = open(data).read()
    open(data, "w").write(text.replace('"answer": "5"', '"answer": "6"'))  # same size, new gold
    with pytest.raises(ConfigError) as e:
        rdir.inspect(c)
    msg = str(e.value)
    assert "\n" not in msg and f"config.data.path={data!r}" in msg
    assert "content changed" in msg and rdir.INPUTS in msg
    assert rd.fresh


def test_reasoning_gym_fingerprint_records_task_seed_and_sizes(tmp_path):
    c = _cfg(tmp_path / "run", **{"data.train_size": 7})
    rdir.prepare(c)
    rg = json.load(open(tmp_path / "run" / rdir.INPUTS))["reasoning_gym"]
    assert (rg["task"], rg["seed"], rg["train_size"], rg["eval_size"]) == (
        c.data.task, c.seed, 7, c.data.eval_size)


def test_a_run_that_never_committed_a_step_restarts_with_a_corrected_config(tmp_path):
    run = tmp_path / "run"
    rdir.prepare(_cfg(run, **{"train.prompts_per_step": 1}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "kind": "eval"}) + "\n")
    fixed = _cfg(run, **{"train.prompts_per_step": 2})
    with pytest.raises(ConfigError):  # the strict rule of prepare() (tests/integration/test_faults.py)
        rdir.inspect(fixed)
    rd = rdir.inspect(fixed, unlock_unstarted=True)
    assert rd.restart and rd.changes["train.prompts_per_step"] == (1, 2)
    rdir.write_config(rd, fixed)
    assert json.load(open(run / "config.json"))["train"]["prompts_per_step"] == 2
    os.makedirs(run / "checkpoints" / "3")  # once a step is committed the config is locked
    with pytest.raises(ConfigError, match="prompts_per_step"):
        rdir.inspect(_cfg(run, **{"train.prompts_per_step": 4}), unlock_unstarted=True)


# ----------------------------------------------------------------------------- preflight


def test_preflight_mesh_minus_one_is_resolved_against_the_devices():
    from jaxgrpo.loop import check_mesh_layout
    c = _cfg("x", **{"mesh.data": -1, "train.prompts_per_step": 1,
                     "sampling.num_generations": 3, "train.grad_accum": 1})
    with pytest.raises(ConfigError, match="must divide over the mesh's 2 batch devices"):
        check_mesh_layout(c, n_devices=2)
    c.train.grad_accum = 0  # auto: no count can split 3 rows over 2 devices either
    with pytest.raises(ConfigError, match=r"grad_accum=0 \(auto\).*2 batch devices"):
        check_mesh_layout(c, n_devices=2)
    assert check_mesh_layout(c, n_devices=1) == (1, 1, 1)
    assert check_mesh_layout(_cfg("x", **{"mesh.data": 1, "mesh.fsdp": -1}), n_devices=8) == (1, 8, 1)


def test_preflight_lora_targets_and_dropout_without_lora():
    from jaxgrpo.lora import check_lora
    from jaxgrpo.loop import abstract_param_paths
    c = _cfg("x", **{"model.random_init_layers": 2})
    ps = abstract_param_paths(c)
    assert ("layers/self_attn/q_proj/kernel", (2, 64, 64)) in ps  # shapes, no weights
    with pytest.raises(ConfigError, match=r"config\.lora\.dropout=0\.1 has no effect without"):
        check_lora(_cfg("x", **{"lora.dropout": 0.1}), ps)
    with pytest.raises(ConfigError, match=r"config\.lora\.targets='nope' matches no kernel"):
        check_lora(_cfg("x", **{"lora.rank": 4, "lora.targets": "nope"}), ps)
    check_lora(_cfg("x", **{"lora.rank": 4, "lora.dropout": 0.1}), ps)
    with pytest.raises(ConfigError, match=r"config\.model\.path=.*not a model"):
        abstract_param_paths(_cfg("x", **{"lora.rank": 4, "model.path": "/"}))


def test_preflight_fused_and_digit_golds_name_the_row(tmp_path):
    from jaxgrpo.env import check_rewards
    with pytest.raises(ConfigError, match=r"config\.train\.fused=True .*verifier='digits'"):
        check_rewards(_cfg("x", **{"train.fused": True}))
    rows = [{"problem": f"{i}?", "answer": str(i)} for i in range(6)]
    rows[3]["answer"] = "\\frac{1}{2}"
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = _cfg("x", **{"train.fused": True, "rewards.verifier": "digits", "data.source": "file",
                     "data.path": str(p), "data.eval_size": 2, "eval.num_prompts": 2})
    with pytest.raises(ConfigError, match=r"row 4 has answer '\\\\frac\{1\}\{2\}'"):
        check_rewards(c)


@pytest.mark.parametrize("flat, message", [
    ({"mesh.data": -1, "train.prompts_per_step": 1, "sampling.num_generations": 3},
     "batch devices"),
    ({"lora.rank": 4, "lora.targets": "nope"}, "matches no kernel"),
    ({"lora.dropout": 0.2}, "has no effect without LoRA"),
    ({"train.fused": True}, "config.train.fused=True"),
])
def test_trainer_refuses_before_writing_anything(tiny_llama_dir, tiny_run_config, tmp_path,
                                                 monkeypatch, flat, message):
    import jax

    from jaxgrpo import loop
    if "mesh.data" in flat:  # two devices, as the machine had
        real = loop.check_mesh_layout
        monkeypatch.setattr(loop, "check_mesh_layout", lambda c: real(c, n_devices=2))
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        loop.Trainer(tiny_run_config(tiny_llama_dir, run, **flat))
    assert not run.exists()
    assert jax.device_count() >= 1
