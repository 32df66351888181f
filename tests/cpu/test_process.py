"""jaxgrpo.cpu.process: the command line's XLA:CPU flag and the malloc tunable (with its
restart)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxgrpo.cpu import process as runtime
from jaxgrpo.cpu.process import (MALLOC_TUNABLE, XLA_CPU_FLAGS, hugepages_help, tune_process,
                                 tuned_environment, with_malloc_tunable, with_xla_flags)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_xla_flags_are_added_once_and_the_users_value_wins():
    assert with_xla_flags("") == " ".join(XLA_CPU_FLAGS)
    both = with_xla_flags("--xla_force_host_platform_device_count=8")
    assert both.split() == ["--xla_force_host_platform_device_count=8", *XLA_CPU_FLAGS]
    assert with_xla_flags(both) == both  # idempotent
    mine = "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    assert with_xla_flags(mine) == mine


def test_malloc_tunable_is_added_beside_others_unless_set():
    assert with_malloc_tunable("") == MALLOC_TUNABLE
    assert with_malloc_tunable("glibc.malloc.arena_max=2") == \
        f"glibc.malloc.arena_max=2:{MALLOC_TUNABLE}"
    assert with_malloc_tunable("glibc.malloc.hugetlb=0") is None  # the user's choice
    assert with_malloc_tunable(MALLOC_TUNABLE) is None


@pytest.mark.parametrize("mode,expected", [("always [madvise] never", True),
                                           ("[always] madvise never", False),
                                           ("always madvise [never]", False)])
def test_hugepages_help_only_in_madvise_mode(tmp_path, monkeypatch, mode, expected):
    monkeypatch.setattr(runtime, "_glibc_version", lambda: (2, 36))
    path = tmp_path / "enabled"
    path.write_text(mode + "\n")
    assert hugepages_help(str(path)) is (expected and sys.platform.startswith("linux"))
    monkeypatch.setattr(runtime, "_glibc_version", lambda: (2, 31))  # before the tunable
    assert hugepages_help(str(path)) is False
    assert hugepages_help(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("value", ["0", "off", "False", "no"])
def test_the_switch_turns_everything_off(value):
    env = {"JAXGRPO_CPU_TUNING": value, "XLA_FLAGS": "--a=1"}
    assert tuned_environment(env) == {}
    calls = []
    assert tune_process(env=env, argv=["x"], execv=lambda *a: calls.append(a)) is False
    assert env == {"JAXGRPO_CPU_TUNING": value, "XLA_FLAGS": "--a=1"} and not calls


def test_an_accelerator_plugin_turns_everything_off(monkeypatch):
    real = runtime.importlib.util.find_spec
    monkeypatch.setattr(runtime.importlib.util, "find_spec",
                        lambda name: object() if name == "jax_cuda12_plugin" else real(name))
    assert tuned_environment({}) == {}


def test_tune_process_restarts_once_with_the_tunable(monkeypatch):
    monkeypatch.setattr(runtime, "hugepages_help", lambda: True)
    monkeypatch.setattr(runtime, "tuning_enabled", lambda env: True)
    env, calls = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, []
    argv = ["/some/python", "-m", "experiments.run", "--config.steps=2"]
    assert tune_process(env=env, argv=argv, execv=lambda *a: calls.append(a))
    assert calls == [(sys.executable, [sys.executable, "-m", "experiments.run",
                                       "--config.steps=2"])]
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{MALLOC_TUNABLE}"
    assert env["XLA_FLAGS"] == " ".join(XLA_CPU_FLAGS)
    # The restarted process: the tunable is there, no second restart.
    assert tune_process(env=env, argv=argv, execv=lambda *a: calls.append(a))
    assert len(calls) == 1
    # Without reexec (a notebook): the XLA flags only.
    env2 = {}
    assert tune_process(reexec=False, env=env2, execv=lambda *a: calls.append(a))
    assert env2 == {"XLA_FLAGS": " ".join(XLA_CPU_FLAGS)} and len(calls) == 1


def test_a_command_restarts_itself_with_both_settings(tmp_path):
    """A real ``python -m`` command: started without the settings, its main body runs once, with
    the XLA flag, and with the tunable where huge pages help (restarted with the same argv)."""
    pkg = tmp_path / "tunecheck"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cmd.py").write_text(textwrap.dedent("""
        import json, os, sys
        with open(sys.argv[-1], "a") as f:
            f.write("start\\n")
        if __name__ == "__main__":
            from jaxgrpo.cpu import tune_process
            tune_process()
            print(json.dumps({"args": sys.argv[1:], "xla": os.environ.get("XLA_FLAGS", ""),
                              "tunables": os.environ.get("GLIBC_TUNABLES", "")}))
    """))
    log = tmp_path / "starts.txt"
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "GLIBC_TUNABLES", "JAXGRPO_CPU_TUNING_REEXEC")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), ROOT])
    out = subprocess.run([sys.executable, "-m", "tunecheck.cmd", "--flag=1", str(log)], env=env,
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["args"] == ["--flag=1", str(log)]
    enabled = runtime.tuning_enabled({})  # False where a GPU / TPU plugin is installed
    assert rec["xla"].split() == (list(XLA_CPU_FLAGS) if enabled else [])
    restarted = enabled and hugepages_help()
    assert rec["tunables"] == (MALLOC_TUNABLE if restarted else "")
    assert log.read_text().count("start") == (2 if restarted else 1)
