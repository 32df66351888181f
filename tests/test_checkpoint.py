"""Background (orbax async) saves on an error exit, and a failed save (issue 38, points 1).

Faults are injected at orbax's commit: the rename of ``<step>.orbax-checkpoint-tmp`` to
``<step>`` is slowed down (a save still in flight when the run fails) or made to fail with
ENOSPC (a full disk). Both run the real orbax manager and the real Trainer.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.checkpoint import SaveError


def _poison_from(trainer, step):
    """The update returns a NaN loss from training step ``step`` (1-based) on."""
    real = trainer.step.update
    calls = [0]

    def poisoned(*args):
        state, m = real(*args)
        calls[0] += 1
        return state, ({**m, "loss": jnp.float32(np.nan)} if calls[0] >= step else m)

    trainer.step.update = poisoned


@pytest.fixture
def slow_or_failing_commit(monkeypatch):
    """``set(mode)``: "slow" delays each checkpoint's commit by 3 s, "enospc" fails it."""
    from orbax.checkpoint._src.path import async_path

    real = async_path.rename
    mode = {"m": None}

    async def rename(src, dst, *a, **k):
        if mode["m"] == "slow":
            await asyncio.sleep(3.0)
        elif mode["m"] == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return await real(src, dst, *a, **k)

    monkeypatch.setattr(async_path, "rename", rename)
    return lambda m: mode.__setitem__("m", m)


def test_non_finite_stop_waits_for_the_background_save_and_names_the_committed_step(
        tiny_llama_dir, tiny_run_config, tmp_path, slow_or_failing_commit):
    from jaxgrpo.loop import Trainer

    run = tmp_path / "run"
    c = tiny_run_config(tiny_llama_dir, run, **{"checkpoint.every": 1,
                                               "checkpoint.async_save": True,
                                               "eval.before_training": False})
    t = Trainer(c)
    _poison_from(t, 2)
    slow_or_failing_commit("slow")
    try:
        with pytest.raises(FloatingPointError) as e:
            t.train()
        # the save of step 1 was in flight when step 2 failed: it is committed before the error
        # leaves train() (an interpreter exiting now would otherwise cut it off)
        assert os.path.isdir(run / "checkpoints" / "1"), os.listdir(run / "checkpoints")
        msg = str(e.value)
        assert "non-finite metrics at step 2: ['loss']" in msg
        assert f"the newest committed checkpoint in {run / 'checkpoints'} is step 1" in msg
    finally:
        t.close()
    # and a resume restores it (it is a real checkpoint, not a tmp directory)
    slow_or_failing_commit(None)
    t = Trainer(c)
    try:
        assert t.maybe_restore() == 1
    finally:
        t.close()


def test_no_committed_checkpoint_is_never_claimed(tiny_llama_dir, tiny_run_config, tmp_path):
    from jaxgrpo.loop import Trainer

    run = tmp_path / "run"
    c = tiny_run_config(tiny_llama_dir, run, **{"checkpoint.every": 0,
                                               "eval.before_training": False})
    t = Trainer(c)
    _poison_from(t, 1)
    try:
        with pytest.raises(FloatingPointError, match="no checkpoint is committed in"):
            t.train()
    finally:
        t.close()


def test_failed_background_save_stops_the_run_with_one_line(
        tiny_llama_dir, tiny_run_config, tmp_path, slow_or_failing_commit, capfd):
    from jaxgrpo.loop import Trainer

    run = tmp_path / "run"
    c = tiny_run_config(tiny_llama_dir, run, steps=4, **{"checkpoint.every": 1,
                                                        "checkpoint.async_save": True,
                                                        "eval.before_training": False})
    t = Trainer(c)
    slow_or_failing_commit("enospc")
    capfd.readouterr()
    try:
        with pytest.raises(SaveError) as e:
            t.train()
    finally:
        t.close()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"checkpoint 1 could not be written to {run / 'checkpoints' / '1'}")
    assert "No space left on device" in msg and "the disk is full" in msg
    assert "no checkpoint is committed yet" in msg
    rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
    # stopped at the failure (the check after step 2 at the latest), not after all 4 steps
    assert max(r["step"] for r in rows if r["kind"] == "train") <= 2
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]  # orbax's logged traceback is dropped
