"""Tests for jaxgrpo.plotting: metrics.jsonl read back by kind, and curves.png drawn from it
(a real PNG of the documented size, the curves holding the values written, missing keys and a
single row tolerated)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from jaxgrpo import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(run_dir, recs):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def _png_size(path):
    """(width, height) from the PNG's IHDR chunk (bytes 16-24)."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR", head
    return struct.unpack(">II", head[16:24])


@pytest.fixture
def captured_figures(monkeypatch):
    """Figures that plot_run closes, kept for inspection."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    real_close = plt.close

    def close(fig=None):
        figs.append(fig)
        real_close(fig)

    monkeypatch.setattr(plt, "close", close)
    return figs


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), np.asarray(line.get_ydata(), float))
            for line in ax.get_lines()}


TRAIN = [{"step": 1, "reward/mean": 0.1, "accuracy": 0.0},
         {"step": 2, "reward/mean": 0.4, "accuracy": 0.25},
         {"step": 3, "reward/mean": 0.7, "accuracy": 0.5}]
EVALS = [{"kind": "eval", "step": 0, "accuracy": 0.1, "pass@1": 0.1, "pass@2": 0.2, "n": 4},
         {"kind": "eval", "step": 3, "accuracy": 0.3, "pass@1": 0.3, "pass@2": 0.5, "n": 4}]


def test_read_metrics_splits_train_and_eval_records(tmp_path):
    recs = [TRAIN[0], EVALS[0], TRAIN[1], {"kind": "train", **TRAIN[2]}, EVALS[1]]
    _write_metrics(tmp_path, recs)
    train, evals = plotting.read_metrics(str(tmp_path))
    assert [r["step"] for r in train] == [1, 2, 3]
    assert train[2]["kind"] == "train"
    assert evals == EVALS
    with pytest.raises(FileNotFoundError):
        plotting.read_metrics(str(tmp_path / "nope"))


def test_plot_run_writes_the_curves(tmp_path, captured_figures):
    _write_metrics(tmp_path, TRAIN + EVALS)
    path = plotting.plot_run(str(tmp_path))
    assert path == str(tmp_path / "curves.png")
    assert _png_size(path) == (1000, 360)  # figsize (10, 3.6) inches at 100 dpi
    fig, = captured_figures
    rollouts, held_out = fig.axes
    got = _lines(rollouts)
    assert sorted(got) == ["train accuracy", "train reward (mean)"]
    assert got["train reward (mean)"][0] == [1, 2, 3]
    np.testing.assert_allclose(got["train reward (mean)"][1], [0.1, 0.4, 0.7])
    np.testing.assert_allclose(got["train accuracy"][1], [0.0, 0.25, 0.5])
    got = _lines(held_out)  # accuracy and pass@k only ("n" is no curve)
    assert sorted(got) == ["accuracy", "pass@1", "pass@2"]
    assert got["pass@2"][0] == [0, 3]
    np.testing.assert_allclose(got["pass@2"][1], [0.2, 0.5])
    np.testing.assert_allclose(got["accuracy"][1], [0.1, 0.3])
    assert held_out.get_title() == "held-out evaluation" and rollouts.get_title() == "rollouts"


def test_plot_run_single_row_missing_keys_and_no_evaluation(tmp_path, captured_figures):
    _write_metrics(tmp_path, [{"step": 7, "accuracy": 0.5}])  # no reward/mean, no eval
    path = plotting.plot_run(str(tmp_path), out_name="one.png")
    assert path == str(tmp_path / "one.png") and _png_size(path)[0] == 1000
    assert not (tmp_path / "curves.png").exists()
    fig, = captured_figures
    got = _lines(fig.axes[0])
    assert np.isnan(got["train reward (mean)"][1]).all()  # a missing key is a gap
    np.testing.assert_allclose(got["train accuracy"][1], [0.5])
    assert fig.axes[1].get_lines() == []


def test_plot_run_eval_only_and_a_missing_eval_key(tmp_path, captured_figures):
    evals = [dict(EVALS[0]), {"kind": "eval", "step": 3, "accuracy": 0.3}]  # pass@k missing
    _write_metrics(tmp_path, evals)
    assert _png_size(plotting.plot_run(str(tmp_path)))[0] == 1000
    fig, = captured_figures
    assert fig.axes[0].get_lines()[0].get_xdata().size == 0  # no train rows
    got = _lines(fig.axes[1])
    np.testing.assert_allclose(got["pass@1"][1], [0.1, np.nan])
