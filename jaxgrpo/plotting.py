"""A PNG of a run's curves (reward, accuracy, held-out accuracy) from its metrics.jsonl."""
from __future__ import annotations

import io
import json

from jaxgrpo import paths


def read_metrics(run_dir: str):
    train, evals = [], []
    with paths.open_file(paths.join(run_dir, "metrics.jsonl")) as f:
        for line in f.read().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            (evals if rec.get("kind") == "eval" else train).append(rec)
    return train, evals


def plot_run(run_dir: str, out_name: str = "curves.png") -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(run_dir)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r.get("reward/mean") for r in train], label="train reward (mean)")
    axes[0].plot(steps, [r.get("accuracy") for r in train], label="train accuracy")
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[0].set_title("rollouts")
    if evals:
        es = [r["step"] for r in evals]
        for key in sorted(k for k in evals[0] if k == "accuracy" or k.startswith("pass@")):
            axes[1].plot(es, [r.get(key) for r in evals], marker="o", label=key)
        axes[1].set_xlabel("step")
        axes[1].legend()
    axes[1].set_title("held-out evaluation")
    fig.tight_layout()
    path = paths.join(run_dir, out_name)
    buf = io.BytesIO()  # rendered in memory, written through the path layer (a bucket too)
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    paths.rewrite(path, buf.getvalue())
    return path
