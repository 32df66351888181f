"""Fault injection: every user mistake and damaged run directory of issue 11, as a test.

Each test is the wrong command (a config, a damaged file, a signal) and what must come of it: a
one-line error naming the key or path, or the files the run directory must hold afterwards.
The numbers in the comments are the issue's fault numbers. Training runs use the tiny random
Llama of conftest.py; one run is trained per module (``trained``) and copied per test.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxgrpo import run_dir as rdir
from jaxgrpo.checkpoint import CheckpointError
from jaxgrpo.experiment import base_config, config_docs, flatten, validate
from jaxgrpo.errors import EXIT_CONFIG_ERROR, EXIT_STOPPED, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _steps(run, kind="train"):
    return [r["step"] for r in _rows(os.path.join(run, "metrics.jsonl")) if r["kind"] == kind]


def _one_line(e) -> str:
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tiny_run_config, tmp_path_factory):
    """A run preempted after step 2 of 3 (checkpoints 1 and 2, samples every step); returns a
    factory ``(config_overrides) -> (run_dir copy, config)``."""
    from jaxgrpo.loop import Trainer

    root = tmp_path_factory.mktemp("faults")
    src = root / "src"
    over = {"steps": 3, "checkpoint.every": 1, "log.samples_every": 1}
    t = Trainer(tiny_run_config(tiny_llama_dir, src, **over))
    try:
        t.train(stop_at=2)
    finally:
        t.close()
    counter = [0]

    def copy(**extra):
        counter[0] += 1
        dst = root / f"copy{counter[0]}"
        shutil.copytree(src, dst)
        return str(dst), tiny_run_config(tiny_llama_dir, dst, **{**over, **extra})

    return copy


# ----------------------------------------------------------------------------- 1-3: one run per dir


def test_1_failed_resume_keeps_config_json_and_the_run_evaluable(trained):
    run, _ = trained()
    before = open(os.path.join(run, "config.json")).read()
    _, changed = trained(**{"model.random_init_layers": 1, "model.random_init_hidden": 128})
    changed.run_dir = run
    from jaxgrpo.loop import Trainer
    with pytest.raises(ConfigError, match=r"model\.random_init_hidden.*model\.random_init_layers"
                       ) as e:
        Trainer(changed)
    assert run in _one_line(e.value)
    assert open(os.path.join(run, "config.json")).read() == before
    from jaxgrpo.policy_io import load_run_policy
    _, _, cfg = load_run_policy(run)  # experiments.evaluate --run_dir still works
    assert cfg.model.random_init_layers == 0


def test_2_changed_hyperparameters_are_refused_naming_the_keys(trained):
    run, c = trained(**{"optim.lr": 5e-2, "advantage.baseline": "dr_grpo"})
    with pytest.raises(ConfigError) as e:
        rdir.prepare(c)
    msg = _one_line(e.value)
    assert "advantage.baseline: 'grpo' (saved) -> 'dr_grpo' (requested)" in msg
    assert "optim.lr: 0.01 (saved) -> 0.05 (requested)" in msg
    assert not os.path.exists(os.path.join(run, "config_changes.jsonl"))


def test_2_safe_changes_resume_and_are_recorded(trained):
    run, c = trained(**{"eval.num_prompts": 1, "log.samples_every": 2, "steps": 5})
    rd = rdir.prepare(c)
    assert not rd.fresh
    moved = (rd.changes.pop("run_dir")[1], run)  # a copy of the run: its directory moved
    assert moved[0] == moved[1]
    assert rd.changes == {"eval.num_prompts": (2, 1), "log.samples_every": (1, 2),
                          "steps": (3, 5)}
    rd.changes["run_dir"] = ("old", run)
    said = []
    rdir.record_changes(rd, 2, log=said.append)
    (row,) = _rows(os.path.join(run, "config_changes.jsonl"))
    assert row["restored_step"] == 2
    assert row["changes"]["steps"] == {"saved": 3, "requested": 5}
    assert "steps 3 -> 5" in said[0]
    assert json.load(open(os.path.join(run, "config.json")))["steps"] == 3  # written once


def test_2_steps_change_is_refused_with_a_decaying_schedule(tiny_run_config, tiny_llama_dir,
                                                           tmp_path):
    c = tiny_run_config(tiny_llama_dir, tmp_path / "run", **{"optim.schedule": "cosine"})
    assert rdir.prepare(c).fresh
    c.steps = 8
    with pytest.raises(ConfigError, match=r"steps: 4 \(saved\) -> 8 .*learning-rate schedule"):
        rdir.prepare(c)


def test_3_resume_false_into_a_used_run_dir_refuses(trained):
    run, c = trained(**{"checkpoint.resume": False})
    listing = sorted(os.listdir(run))
    with pytest.raises(ConfigError) as e:
        rdir.prepare(c)
    msg = _one_line(e.value)
    assert run in msg and "checkpoint.resume=False" in msg and "--config.run_dir" in msg
    assert sorted(os.listdir(run)) == listing


def test_3_a_foreign_non_empty_dir_is_refused(tiny_run_config, tiny_llama_dir, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"no config\.json.*not a jaxgrpo run"):
        rdir.prepare(tiny_run_config(tiny_llama_dir, tmp_path / "run"))


def test_fresh_run_writes_config_json_before_the_model_is_built(tiny_run_config, tiny_llama_dir,
                                                                tmp_path):
    c = tiny_run_config(tiny_llama_dir, tmp_path / "new")
    rd = rdir.prepare(c)
    assert rd.fresh and rd.path == str(tmp_path / "new")
    saved = json.load(open(tmp_path / "new" / "config.json"))
    assert saved["steps"] == 4 and saved["model"]["path"] == tiny_llama_dir
    assert rdir.prepare(c).fresh is False  # the same config resumes, with no changes
    assert rdir.prepare(c).changes == {}


# ----------------------------------------------------------------------------- 4: no lost or doubled rows


def test_4_resume_after_kill_truncates_leftovers_and_summary_keeps_step_0(trained, capsys):
    from jaxgrpo.loop import Trainer

    run, c = trained()
    # What a kill -9 during step 3 leaves: its metrics and samples rows, a half-written line
    # and an eval file of a step that has no checkpoint.
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 3, "kind": "train", "loss": 1.0}) + "\n")
        f.write('{"step": 3, "kind": "tra')
    with open(os.path.join(run, "samples.jsonl"), "a") as f:
        f.write(json.dumps({"step": 3, "completion": "stale"}) + "\n")
    open(os.path.join(run, "eval_step3.jsonl"), "w").write("{}\n")
    c.log.progress = True  # 10: progress lines
    t = Trainer(c)
    try:
        t.train()
    finally:
        t.close()
    out = capsys.readouterr().out
    assert "dropped 2 metrics.jsonl rows, 1 samples.jsonl rows, 1 eval_step files" in out
    for stage in ("loading the model", "step 3: the first step compiles", "saving checkpoint 3",
                  "evaluating after step 3"):
        assert stage in out, (stage, out)
    assert _steps(run) == [1, 2, 3]
    assert _steps(run, "eval") == [0, 3]
    samples = _rows(os.path.join(run, "samples.jsonl"))
    assert sorted({r["step"] for r in samples}) == [1, 2, 3]  # counted from 1, like metrics
    assert all(r["completion"] != "stale" for r in samples)
    summary = json.load(open(os.path.join(run, "summary.json")))["eval"]
    assert sorted(summary) == ["0", "3"]  # step 0 is from the first sitting
    assert "accuracy" in summary["0"] and "pass@1" in summary["3"]


def test_4_rewind_rules():
    """Pure: which rows survive a resume at step s (the eval at s survives unless redone)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rows = [{"step": 0, "kind": "eval"}, {"step": 1, "kind": "train"},
                {"step": 2, "kind": "train"}, {"step": 2, "kind": "eval"},
                {"step": 3, "kind": "train"}]
        for redo, want in ((False, [0, 1, 2, 2]), (True, [0, 1, 2])):
            with open(os.path.join(d, "metrics.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            rdir.rewind(d, 2, redo_eval=redo, log=lambda m: None)
            assert [r["step"] for r in _rows(os.path.join(d, "metrics.jsonl"))] == want
        rdir.rewind(d, 0, redo_eval=True, log=lambda m: None)  # no checkpoint: start over
        assert _rows(os.path.join(d, "metrics.jsonl")) == []


# ----------------------------------------------------------------------------- 5: damaged checkpoints


def _truncate_arrays(step_dir):
    victims = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state"))
               for f in fs if os.path.basename(d) == "d" and os.path.getsize(os.path.join(d, f))]
    assert victims
    for v in victims:
        os.truncate(v, os.path.getsize(v) // 3)


def test_5_corrupt_latest_checkpoint_is_one_line_and_falls_back_when_asked(trained, capsys):
    from jaxgrpo.loop import Trainer

    run, c = trained()
    ckpt2 = os.path.join(run, "checkpoints", "2")
    _truncate_arrays(ckpt2)
    t = Trainer(c)
    try:
        with pytest.raises(CheckpointError) as e:
            t.maybe_restore()
    finally:
        t.close()
    msg = _one_line(e.value)
    assert f"checkpoint {ckpt2} is corrupt or truncated" in msg
    assert "TensorStore" not in msg and "checkpoint.fallback=True" in msg and "[1]" in msg
    assert len(msg) < 700

    c.checkpoint.fallback = True
    t = Trainer(c)
    try:
        assert t.maybe_restore() == 1
        assert t.train_iter.position == 2  # the data position of checkpoint 1 (P = 2)
    finally:
        t.close()
    out = capsys.readouterr().out
    assert f"checkpoint {ckpt2} is corrupt" in out and "trying step 1" in out
    assert os.path.isdir(os.path.join(run, "corrupt_checkpoints", "2"))
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["1"]


def test_5_empty_meta_file_has_its_own_message(trained):
    from jaxgrpo.loop import Trainer

    run, c = trained()
    meta = os.path.join(run, "checkpoints", "2", "meta", "metadata")
    open(meta, "w").close()
    t = Trainer(c)
    try:
        with pytest.raises(CheckpointError) as e:
            t.maybe_restore()
    finally:
        t.close()
    msg = _one_line(e.value)
    assert f"metadata file {meta} is empty" in msg
    assert "different model" not in msg


# ----------------------------------------------------------------------------- 6: exit codes, steps


def test_6_non_finite_metric_counts_steps_like_the_files(trained):
    import jax.numpy as jnp

    from jaxgrpo.loop import Trainer

    run, c = trained()
    t = Trainer(c)
    real = t.step.update  # the step's jitted update (jaxgrpo.step)

    def poisoned(*args):
        state, m = real(*args)
        return state, {**m, "loss": jnp.float32(np.nan)}

    t.step.update = poisoned
    try:
        with pytest.raises(FloatingPointError, match=r"at step 3: \['loss'\]"):
            t.train()  # resumes at 2; the step it runs is the third
    finally:
        t.close()


def _cfg_file(tmp_path, c):
    flat = {k: v for k, v in flatten(c.to_dict()).items()}
    p = tmp_path / "cfg.py"
    p.write_text("import json\nfrom jaxgrpo.experiment import base_config\n\n\ndef get_config():\n"
                 "    c = base_config()\n"
                 f"    c.update_from_flattened_dict(json.loads({json.dumps(json.dumps(flat))}))\n"
                 "    return c\n")
    return str(p)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_6_sigterm_exits_75_and_kill_9_resumes_without_duplicates(tiny_llama_dir,
                                                                  tiny_run_config, tmp_path):
    run = tmp_path / "run"
    c = tiny_run_config(tiny_llama_dir, run, steps=200, **{"checkpoint.every": 2})
    cfg = _cfg_file(tmp_path, c)

    def start_and_wait(min_train_rows):
        proc = subprocess.Popen([sys.executable, "-m", "experiments.run", f"--config={cfg}"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        deadline = time.time() + 600  # start-up and compilation on a loaded 2-core box
        while time.time() < deadline and proc.poll() is None:
            m = run / "metrics.jsonl"
            if m.exists() and m.read_text().count('"kind": "train"') >= min_train_rows:
                return proc
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
        raise AssertionError(proc.communicate()[0][-3000:])

    proc = start_and_wait(3)  # past checkpoint 2, inside step 4 at the latest
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # kill -9: resume to a short end; the rows after checkpoint 2 must not be doubled
    p = _cli(f"--config={cfg}", "--config.steps=4")
    assert p.returncode == 0, p.stderr[-3000:]
    assert _steps(str(run)) == [1, 2, 3, 4]
    summary = json.load(open(run / "summary.json"))["eval"]
    assert sorted(summary, key=int) == ["0", "4"]
    # SIGTERM: checkpoint saved, exit code 75
    proc = start_and_wait(6)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, out[-3000:]
    assert "saving a checkpoint" in out and "run the same command to resume" in out
    assert _steps(str(run)) == list(range(1, len(_steps(str(run))) + 1))


# ----------------------------------------------------------------------------- 7: --help, --config


def test_7_help_lists_every_key_with_type_default_and_doc():
    p = _cli("--help", timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    docs = config_docs()
    for key, value in flatten(base_config()).items():
        line = next((ln for ln in p.stdout.splitlines() if ln.strip().startswith(key + " ")),
                    None)
        assert line is not None, key
        assert f"{type(value).__name__}" in line and f"default {value!r}" in line, line
        if not key.startswith("advantage.options."):
            assert docs[key] and docs[key] in line, (key, line)
    assert "[checkpoint]" in p.stdout and "75" in p.stdout  # grouped; exit codes documented


def test_7_missing_config_file_is_one_line():
    p = _cli("--config=experiments/configs/nope.py", timeout=120)
    assert p.returncode == EXIT_CONFIG_ERROR
    assert p.stderr.strip() == "config error: --config file not found: experiments/configs/nope.py"


# ----------------------------------------------------------------------------- 8: validate


def _with(**flat):
    c = base_config()
    c.update_from_flattened_dict(flat)
    return c


def test_8_unknown_task_and_bad_task_options_fail_in_validate():
    with pytest.raises(ConfigError, match=r"config\.data\.task='basic_arithmetc': is not a "
                                          r"reasoning-gym task.*did you mean basic_arithmetic"):
        validate(_with(**{"data.task": "basic_arithmetc"}), inputs=True)
    with pytest.raises(ConfigError, match=r"config\.data\.task_kwargs=.*rejected by reasoning-gym"):
        validate(_with(**{"data.task_kwargs": '{"no_such_option": 3}'}), inputs=True)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_8_data_files_are_opened_in_validate_with_line_numbers(tmp_path):
    good = [json.dumps({"problem": f"{i} + 1?", "answer": str(i + 1)}) for i in range(8)]

    def check(path, **flat):
        with pytest.raises(ConfigError) as e:
            validate(_with(**{"data.source": "file", "data.path": path, "data.eval_size": 2,
                              "eval.num_prompts": 2, **flat}), inputs=True)
        return _one_line(e.value)

    missing = str(tmp_path / "missing.jsonl")
    assert check(missing) == f"config.data.path={missing!r}: file not found"
    bad = good.copy()
    bad[4] = bad[4][:-5]
    msg = check(_write(tmp_path / "bad.jsonl", bad))
    assert "bad.jsonl': line 5: not valid JSON" in msg
    no_field = [json.dumps({"question": "1?", "answer": "1"})] * 4
    msg = check(_write(tmp_path / "nofield.jsonl", no_field))
    assert "line 1: no field 'problem'" in msg and "config.data.question_field" in msg
    blank = good.copy()
    blank[2] = json.dumps({"problem": "  ", "answer": "1"})
    assert "line 3: field 'problem' is '  '" in check(_write(tmp_path / "blank.jsonl", blank))
    small = _write(tmp_path / "small.jsonl", good[:2])
    assert "config.data.eval_size=2: data.path=" in check(small)
    ev = _write(tmp_path / "eval.jsonl", good[:1])
    assert "config.eval.num_prompts=2 is more than the 1 rows of config.data.eval_path" in check(
        _write(tmp_path / "train.jsonl", good), **{"data.eval_path": ev})
    arr = tmp_path / "arr.json"
    arr.write_text('[{"problem": "1?", "answer": "1"},\n {"problem": "2?" "answer": "2"}]')
    assert "arr.json': line 2 column" in check(str(arr))
    # A good file passes
    validate(_with(**{"data.source": "file", "data.path": _write(tmp_path / "ok.jsonl", good),
                      "data.eval_size": 2, "eval.num_prompts": 2}), inputs=True)


def test_8_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    p = _cli("--config.sampling.top_k=-5", "--config.data.prompt_format={quesiton}", timeout=120)
    assert p.returncode == EXIT_CONFIG_ERROR
    assert p.stderr.strip() == "config error: config.sampling.top_k=-5: must be >= 0"


@pytest.mark.parametrize("env, message", [
    ({"JAXGRPO_WARM_MEMORY": "sometimes"}, "JAXGRPO_WARM_MEMORY='sometimes': use auto, 1 or 0"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "one"}, "JAX_PROCESS_ID='one': must be an int >= 0"),
])
def test_8_a_bad_environment_variable_is_one_line_before_anything_loads(tmp_path, env, message):
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "experiments.run", f"--config.run_dir={run}"],
                       cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == EXIT_CONFIG_ERROR, p.stderr[-2000:]
    assert p.stderr.strip() == f"config error: {message}"
    assert not run.exists()  # refused before the run directory (or a model) was made


# ----------------------------------------------------------------------------- 9: the reward pool


def test_9_reward_pool_in_a_script_without_main_guard_fails_naming_the_cause(tmp_path):
    script = tmp_path / "score.py"
    script.write_text("from jaxgrpo.rewards.math_verify_pool import MathVerifier\n"
                      "v = MathVerifier(num_workers=1)\n"
                      "print(v.verify_batch(['1/2'], ['0.5'], pre_extracted=True))\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.time()
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: math-verify pool cannot start")
    assert str(script) in last and 'if __name__ == "__main__":' in last
    assert time.time() - t0 < 60  # no start retries before the error


# ----------------------------------------------------------------------------- 10: noise


def test_10_orbax_warnings_are_dropped_errors_kept(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", raising=False)
    rdir.quiet_third_party()
    assert os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] == "1"
    absl = logging.getLogger("absl")

    def record(level, path):
        return logging.LogRecord("absl", level, path, 1, "msg", None, None)

    orbax_file = "/x/site-packages/orbax/checkpoint/_src/handlers/composite.py"
    assert not all(f.filter(record(logging.WARNING, orbax_file)) for f in absl.filters)
    assert all(f.filter(record(logging.ERROR, orbax_file)) for f in absl.filters)
    assert all(f.filter(record(logging.WARNING, "/x/site-packages/jax/_src/xla_bridge.py"))
               for f in absl.filters)


# ----------------------------------------------------------------------------- issue 38: exits


def _wait_for(proc, text, timeout=600):
    """Reads the merged output of ``proc`` until a line holds ``text``; returns what was read."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError("".join(seen)[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("sig, phase", [(signal.SIGTERM, "evaluating before training"),
                                        (signal.SIGINT, "loading the model")])
def test_38_a_signal_at_any_phase_exits_75_with_one_line(tiny_llama_dir, tiny_run_config,
                                                         tmp_path, sig, phase):
    run = tmp_path / "run"
    c = tiny_run_config(tiny_llama_dir, run, **{"log.progress": True, "eval.num_prompts": 4})
    proc = subprocess.Popen([sys.executable, "-m", "experiments.run", f"--config={_cfg_file(tmp_path, c)}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(proc, phase)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"[jaxgrpo] stopped by signal {int(sig)}") and "resume" in last


def test_38_malformed_benchmark_file_names_the_line_and_exits_2(tmp_path):
    bench = tmp_path / "b.jsonl"
    bench.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": \n')
    p = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--model", str(tmp_path),
                        "--benchmark", f"x={bench}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == EXIT_CONFIG_ERROR, p.stderr[-2000:]
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith(f"evaluate: error: benchmark file {bench} (--benchmark x): line 2")


def test_38_evaluate_checks_the_output_is_writable_before_computing(tmp_path):
    from experiments.evaluate import EvalError, check_writable

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(EvalError, match=r"cannot write the results to .*file/eval.*--out"):
        check_writable(str(blocker / "eval" / "step1.json"))
    check_writable(str(tmp_path / "ok" / "step1.json"))


def test_38_unwritable_compilation_cache_is_one_line_and_the_run_goes_on(tmp_path, capsys):
    import importlib
    run = importlib.import_module("experiments.run")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run.enable_compilation_cache({"JAXGRPO_COMPILATION_CACHE": str(blocker / "c")}) == ""
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"[jaxgrpo] compilation cache {blocker / 'c'} is not writable")
