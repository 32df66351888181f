"""Multi-host on one machine: 2 local processes x 4 CPU devices (gloo collectives, loopback
coordinator) run the same sampler, updates and checkpoint as 1 process x 8 devices.

Each process feeds only its own rows of every batch; the 8-device mesh (1, 4, 2) has its fsdp
axis across the two processes, so every weight is split over both. The single-process run is the
reference: the 2-process metrics, sampled tokens and checkpoint must equal it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "_multihost_worker.py")
TIMEOUT = 900


def _env(devices: int):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(cmd_of, env_of):
    """Start processes 0 and 1 (``cmd_of(i)``, ``env_of(i)``) together, wait for both, and
    assert that both exited 0."""
    procs = [subprocess.Popen(cmd_of(i), cwd=ROOT, env=env_of(i), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:  # never leave a worker waiting on its peer
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i}:\n{logs[i][-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multihost")
    port = _free_port()
    _run_two(lambda i: [sys.executable, WORKER, "multi", str(tmp / "multi.json"),
                        str(tmp / "ckpt_multi"), str(port), str(i)], lambda i: _env(4))
    single = subprocess.run([sys.executable, WORKER, "single", str(tmp / "single.json"),
                             str(tmp / "ckpt_single"), str(tmp / "ckpt_multi")],
                            cwd=ROOT, env=_env(8), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    multi = [json.loads((tmp / f"multi.json.{i}").read_text()) for i in range(2)]
    return dict(multi=multi, single=json.loads((tmp / "single.json").read_text()), dir=tmp)


def _assert_metrics_equal(got, want):
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_two_processes_form_one_mesh_and_feed_their_own_rows(runs):
    m0, m1 = runs["multi"]
    assert (m0["process_index"], m1["process_index"]) == (0, 1)
    assert m0["process_count"] == m1["process_count"] == 2
    assert m0["local_devices"] == m1["local_devices"] == 4
    # Prompts are split over data x fsdp = 4: two rows per process.
    assert m0["rows"] == [0, 2] and m1["rows"] == [2, 4]
    assert runs["single"]["rows"] == [0, 4]
    assert m0["prompts_roundtrip"] and m1["prompts_roundtrip"]


@pytest.mark.slow
def test_update_metrics_equal_the_single_process_run(runs):
    single = runs["single"]
    assert len(single["metrics"]) == 2
    for proc in runs["multi"]:
        for got, want in zip(proc["metrics"], single["metrics"]):
            _assert_metrics_equal(got, want)
    # The updates moved the weights (lr 1e-6: about 1e-6 per step), so the comparison is not of
    # two no-ops.
    assert single["metrics"][0]["grad_norm"] > 0
    for run in (single, *runs["multi"]):
        assert run["params_changed"] > 1e-6


@pytest.mark.slow
def test_sampler_output_gathered_on_every_process_equals_the_single_run(runs):
    single = runs["single"]
    for proc in runs["multi"]:
        assert proc["sample_tokens"] == single["sample_tokens"]
        np.testing.assert_allclose(proc["sample_logprobs"], single["sample_logprobs"],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_checkpoint_saves_and_restores_across_two_processes(runs):
    single = runs["single"]
    for proc in runs["multi"]:
        assert proc["restore_shards_equal"]
        assert proc["restore_step"] == 2
        assert proc["restore_meta"] == {"step": 2, "data_position": 8}
        # Training on from the restored state continues the single-process run.
        _assert_metrics_equal(proc["metrics_after_restore"], single["metrics_after_restore"])
        np.testing.assert_allclose(proc["param_checksum"], single["param_checksum"], rtol=1e-5)
    # The 2-process checkpoint restores into the 1-process layout, bit for bit what the two
    # processes saved (gathered on process 0 at save time).
    saved = np.load(runs["dir"] / "multi.json.0.saved.npz")
    restored = np.load(runs["dir"] / "single.json.cross_restored.npz")
    assert sorted(saved.files) == sorted(restored.files) and len(saved.files) > 10
    for k in saved.files:
        np.testing.assert_array_equal(restored[k], saved[k], err_msg=k)
    assert single["cross_restore_sharding_same"]
    assert single["cross_restore_meta"] == {"step": 2, "data_position": 8}


def test_only_process_0_writes_host_files(tiny_llama_dir, tiny_run_config, tmp_path, monkeypatch):
    """A Trainer that is not process 0 trains and checkpoints (orbax: every process) but writes
    no host file: no config.json, metrics, samples, evaluations or summary (process 0 does)."""
    import jaxgrpo.sharding as shd
    from jaxgrpo.loop import Trainer

    monkeypatch.setattr(shd, "is_primary_process", lambda: False)
    c = tiny_run_config(tiny_llama_dir, tmp_path / "run", steps=2, **{"checkpoint.every": 1,
                                                                      "log.samples_every": 1})
    t = Trainer(c)
    try:
        assert t.writer is False
        run_dir = t.train()
    finally:
        t.close()
    assert int(t.state.step) == 2 and len(t.history) == 2
    assert sorted(os.listdir(run_dir)) == ["checkpoints"], os.listdir(run_dir)

    monkeypatch.setattr(shd, "is_primary_process", lambda: True)  # process 0: all the files
    c = tiny_run_config(tiny_llama_dir, tmp_path / "run0", steps=2, **{"log.samples_every": 1})
    t = Trainer(c)
    try:
        run_dir = t.train()
    finally:
        t.close()
    names = set(os.listdir(run_dir))
    assert {"config.json", "metrics.jsonl", "samples.jsonl", "summary.json",
            "eval_step0.jsonl", "eval_step2.jsonl"} <= names, names


def _cli_env(devices: int, **extra):
    env = _env(devices)
    env.update(JAXGRPO_COMPILATION_CACHE="0", **extra)
    return env


def _records(run_dir, name):
    with open(os.path.join(run_dir, name)) as f:
        return [json.loads(line) for line in f]


def _without_timings(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("time/") and k != "tokens_per_s"}


@pytest.mark.slow
@pytest.mark.parametrize("path", ["host", "fused", "dra", "lora", "dynamic", "anchors"])
def test_the_cli_trains_and_resumes_across_two_processes_as_on_one(tiny_llama_dir,
                                                                   tiny_run_config, tmp_path,
                                                                   path):
    """`python -m experiments.run` started twice with JAX_COORDINATOR_ADDRESS /
    JAX_NUM_PROCESSES / JAX_PROCESS_ID (4 CPU devices each, one (1, 4, 2) mesh, fsdp across the
    processes) trains 2 steps with evaluations and checkpoints, then resumes to step 3, and
    writes the metrics, samples and evaluations of one process with 8 devices: the host step
    (text rewards), the fused one (one jit, digit rewards on token ids) and DRA (the policy's
    embeddings of the completions), and LoRA, dynamic sampling and DaGRPO's anchors on the host
    step."""
    from tests.integration.test_faults import _cfg_file
    from tests.test_step import DIGITS

    from jaxgrpo.errors import EXIT_OK

    extra = {"host": {}, "fused": dict(DIGITS, **{"train.fused": True}),
             # DRA on the policy's own embeddings, as the paper configs run it
             "dra": {"advantage.reward_transforms": "dra", "embedding.model": "policy"},
             "lora": {"lora.rank": 4},  # the adapters trained, the frozen base sharded
             # resampling rounds until the groups with spread fill the batch (verl's filter)
             "dynamic": {"train.dynamic_sampling": True},
             # DaGRPO's anchor completion added to every group
             "anchors": {"anchors.enabled": True, "anchors.trigger": "always",
                         "advantage.baseline": "dagrpo"}}[path]
    runs = {}
    for mode in ("single", "multi"):
        (tmp_path / mode).mkdir()
        c = tiny_run_config(tiny_llama_dir, tmp_path / mode / "run", steps=2, **{
            "checkpoint.every": 1, "log.samples_every": 1, "train.prompts_per_step": 4,
            "eval.num_prompts": 4, "optim.lr": 1e-6, "mesh.data": 1, "mesh.fsdp": 4,
            "mesh.tensor": 2}, **extra)
        runs[mode] = (_cfg_file(tmp_path / mode, c), str(tmp_path / mode / "run"))

    def run(mode, steps):
        cfg, _ = runs[mode]
        cmd = [sys.executable, "-m", "experiments.run", f"--config={cfg}",
               f"--config.steps={steps}"]
        if mode == "single":
            p = subprocess.run(cmd, cwd=ROOT, env=_cli_env(8), capture_output=True, text=True,
                               timeout=TIMEOUT)
            assert p.returncode == EXIT_OK, p.stdout[-3000:] + p.stderr[-3000:]
            return
        port = _free_port()
        _run_two(lambda i: cmd, lambda i: _cli_env(
            4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i)))

    for mode in ("single", "multi"):
        run(mode, 2)
        run(mode, 3)  # resumes from the step-2 checkpoint
    one, two = runs["single"][1], runs["multi"][1]
    m1, m2 = _records(one, "metrics.jsonl"), _records(two, "metrics.jsonl")
    assert [r["step"] for r in m1] == [r["step"] for r in m2]
    assert [r["step"] for r in m1 if r["kind"] == "train"] == [1, 2, 3]
    for a, b in zip(m1, m2):
        a, b = _without_timings(a), _without_timings(b)
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
            else:
                assert b[k] == a[k], k
    if path != "fused":  # the cosine length reward spreads: real updates are compared
        assert next(r for r in m1 if r["kind"] == "train")["grad_norm"] > 0
    if path == "dynamic":  # the filter ran (kept / spare groups taken and concatenated); with
        # this reward every group has spread, so no second round is sampled
        assert all(r["dynamic/rounds"] == 1 for r in m1 if r["kind"] == "train")
    # (the random tiny policy writes no digits: the fused run's rewards, advantages and
    # gradients are 0, so there its sampling, evaluation and checkpoints are what is compared)
    for name in ("samples.jsonl", "eval_step0.jsonl", "eval_step3.jsonl"):
        got, want = _records(two, name), _records(one, name)
        assert len(got) == len(want) > 0, name
        for a, b in zip(got, want):  # texts, answers, lengths exact; floats to rounding
            assert a.keys() == b.keys(), name
            for k in a:
                if isinstance(b[k], float) or (isinstance(b[k], list) and b[k]
                                               and isinstance(b[k][0], float)):
                    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=f"{name}: {k}")
                else:
                    assert a[k] == b[k], f"{name}: {k}"
    assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == \
        sorted(os.listdir(os.path.join(one, "checkpoints")))
