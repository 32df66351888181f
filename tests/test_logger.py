"""Tests for jaxgrpo.logger: the metrics.jsonl records and the ``log.every`` window means."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxgrpo.logger import MetricsLogger, MetricsWindow, to_python


def test_to_python():
    assert to_python(np.float32(0.5)) == 0.5 and isinstance(to_python(np.int64(3)), int)
    assert to_python(np.asarray([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]


def test_metrics_jsonl_rows(tmp_path):
    log = MetricsLogger(str(tmp_path), tensorboard=False)
    log.log(1, {"loss": np.float32(0.25), "reward": 2, "hist": np.asarray([1.5, 2.5])})
    log.log(1, {"pass@1": 0.75}, kind="eval")
    log.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [{"step": 1, "kind": "train", "loss": 0.25, "reward": 2, "hist": [1.5, 2.5]},
                    {"step": 1, "kind": "eval", "pass@1": 0.75}]


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(str(tmp_path), tensorboard=False, enabled=False)
    log.log(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_window_means_over_every_steps():
    w = MetricsWindow(every=3)
    assert not w.add(1, {"loss": 1.0, "a": 10.0})
    assert not w.add(2, {"loss": 2.0})
    assert w.add(3, {"loss": 6.0, "a": 20.0}) and len(w) == 3
    # a key missing from a step is averaged over the steps that have it
    assert w.mean() == {"loss": 3.0, "a": 15.0, "log_window": 3}
    assert len(w) == 0
    w.add(4, {"loss": 4.0})
    assert w.mean() == {"loss": 4.0, "log_window": 1}  # a partial window (the last steps)


def test_window_of_one_step_is_the_step():
    w = MetricsWindow(every=1)
    assert w.add(7, {"loss": 0.5}) and w.mean() == {"loss": 0.5}
    with pytest.raises(ValueError, match="config.log.every"):
        MetricsWindow(every=0)
