"""The metrics log of a run: JSONL always, TensorBoard and Weights & Biases when asked.

``config.log.every = N`` writes one train record every N steps: the mean of each metric over
those N steps (min/max keys too: the mean of the per-step values), under the window's last
step, with ``log_window`` = the number of steps averaged (when N > 1). A run that ends (or is
preempted) mid-window writes the partial window. Evaluation records are written as they come;
``Trainer.history`` keeps every step's metrics.
"""
from __future__ import annotations

import json
import os
import dataclasses
import time
from typing import Any, ClassVar, Dict, List, Optional

import numpy as np

from jaxgrpo import config

__all__ = ["LogConfig", "MetricsLogger", "MetricsWindow"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogConfig(config.Section):
    """Logging: metrics.jsonl always; TensorBoard / W&B when asked.

    The ``config.log`` section (:class:`MetricsLogger` and the trainer's progress output).
    """

    NAME: ClassVar[str] = "log"
    every: int = config.key(1, 'log training metrics every this many steps', ge=1)
    samples_every: int = config.key(
        5, 'write completions to samples.jsonl every this many steps; 0 = never', ge=0)
    tensorboard: bool = config.key(True, 'also write TensorBoard events (run_dir/tb)')
    wandb: bool = config.key(False, 'also log to Weights & Biases')
    progress: bool = config.key(True, 'progress bar and progress lines on the terminal')


def to_python(v):
    """A scalar or array -> a JSON-ready Python number or nested list."""
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


class MetricsWindow:
    """Collects per-step metric dicts; ``mean()`` averages them key by key and empties it."""

    def __init__(self, every: int):
        if every < 1:
            raise ValueError(f"config.log.every must be >= 1, got {every}")
        self.every = every
        self._steps: List[Dict[str, float]] = []

    def add(self, step: int, metrics: Dict[str, float]) -> bool:
        """Adds one step; True when the window is full (``step`` is a multiple of ``every``)."""
        self._steps.append(metrics)
        return step % self.every == 0

    def __len__(self):
        return len(self._steps)

    def mean(self) -> Dict[str, float]:
        keys = list(dict.fromkeys(k for m in self._steps for k in m))
        out = {k: float(np.mean([m[k] for m in self._steps if k in m])) for k in keys}
        if self.every > 1:
            out["log_window"] = len(self._steps)
        self._steps = []
        return out


class MetricsLogger:
    """Writes ``<run_dir>/metrics.jsonl`` records ``{"step", "kind", **metrics}``; mirrors the
    numbers to TensorBoard (``<run_dir>/tb``) and to W&B when configured."""

    def __init__(self, run_dir: str, tensorboard: bool, wandb_config: Optional[dict] = None,
                 enabled: bool = True):
        from jaxgrpo import paths
        self.path = paths.join(run_dir, "metrics.jsonl")
        self.enabled = enabled  # False: a multi-host run's other processes (process 0 writes)
        # through the path layer: a local file, or an object rewritten on flush (a bucket)
        self._f = paths.AppendFile(self.path) if enabled else None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if wandb_config is not None:
            try:
                import wandb
            except ImportError:
                raise ImportError("config.log.wandb=True but wandb is not installed: "
                                  "pip install wandb (set WANDB_MODE=offline without network)")
            self._wandb = wandb.init(project="jaxgrpo", name=wandb_config.get("name"),
                                     dir=run_dir, config=wandb_config, resume="allow")
        if tensorboard:
            try:
                from tensorboard.compat.proto.event_pb2 import Event
                from tensorboard.compat.proto.summary_pb2 import Summary
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
                # TensorBoard's writer takes gs:// itself (tf.io.gfile); other URLs get none
                self._tb = (EventFileWriter(paths.join(run_dir, "tb")), Event, Summary)
            except ImportError:
                self._tb = None

    def log(self, step: int, metrics: Dict[str, Any], kind: str = "train"):
        if not self.enabled:
            return
        rec = {"step": step, "kind": kind, **{k: to_python(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        numbers = {f"{kind}/{k}": v for k, v in rec.items()
                   if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            writer, Event, Summary = self._tb
            vals = [Summary.Value(tag=k, simple_value=float(v)) for k, v in numbers.items()]
            writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=vals)))
            writer.flush()
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self):
        if self._f is not None:
            self._f.close()
        if self._tb is not None:
            self._tb[0].close()
        if self._wandb is not None:
            self._wandb.finish()
