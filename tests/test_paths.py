"""The path layer (jaxgrpo.paths) and a run directory on a non-local filesystem (fsspec's
memory://), without a network (issue 38, point 7)."""
from __future__ import annotations

import json
import os
import time

import pytest

from jaxgrpo import paths
from jaxgrpo import run_dir as rdir


def test_urls_are_never_made_absolute_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("gs://bucket/runs/x/") == "gs://bucket/runs/x"
    assert paths.join("gs://bucket/runs/x", "checkpoints") == "gs://bucket/runs/x/checkpoints"
    assert paths.resolve("runs/x") == str(tmp_path / "runs" / "x")
    assert not paths.is_url("/tmp/a") and not paths.is_url("C:\\a") and paths.is_url("s3://b/k")
    from jaxgrpo.checkpoint import Checkpointer
    ck = Checkpointer.__new__(Checkpointer)
    assert paths.resolve("gs://b/r/checkpoints") == "gs://b/r/checkpoints"
    from jaxgrpo.experiment import base_config
    c = base_config()
    c.run_dir = "gs://my-bucket/runs/dra_paper"
    assert rdir.resolve_path(c) == "gs://my-bucket/runs/dra_paper"
    assert not (tmp_path / "gs:").exists()
    del ck


def test_run_dir_files_and_resume_rules_on_memory_filesystem():
    from jaxgrpo.experiment import base_config
    from jaxgrpo.logger import MetricsLogger

    url = f"memory://runs/r{time.time_ns()}"
    c = base_config()
    c.run_dir = url
    rd = rdir.prepare(c)
    assert rd.fresh and paths.isfile(url + "/config.json") and paths.isfile(url + "/inputs.json")
    lg = MetricsLogger(url, tensorboard=False)
    for s in (1, 2, 3):
        lg.log(s, {"loss": float(s)})
    lg.log(3, {"accuracy": 0.5}, kind="eval")
    lg.close()
    f = paths.AppendFile(url + "/samples.jsonl")
    f.write("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    f.close()
    paths.write_text(url + "/eval_step3.jsonl", "{}\n")
    assert rdir.evaluations(url) == {3: {"accuracy": 0.5}}
    # a resume from step 2: the same config resumes, and the rows after step 2 are dropped
    assert not rdir.prepare(c).fresh
    dropped = rdir.rewind(url, 2, redo_eval=False, log=lambda m: None)
    assert dropped == {"metrics.jsonl": 2, "samples.jsonl": 1, "eval_step files": 1}
    rows = [json.loads(x) for x in paths.read_text(url + "/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    lg = MetricsLogger(url, tensorboard=False)  # appends after the rewind
    lg.log(3, {"loss": 9.0})
    lg.close()
    rows = [json.loads(x) for x in paths.read_text(url + "/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 9.0
    from jaxgrpo.plotting import plot_run
    png = plot_run(url)
    assert paths.read_text  # noqa: B018
    with paths.open_file(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="prompts_per_step"):
        c2 = base_config()
        c2.run_dir = url
        c2.train.prompts_per_step = 8
        os.environ.get("X")  # (no local file is involved anywhere)
        paths.makedirs(url + "/checkpoints/2")
        paths.write_text(url + "/checkpoints/2/commit_success.txt", "ok")
        rdir.inspect(c2, unlock_unstarted=True)
