"""The host driver of a run: data, the training step, logging, evaluation and checkpoints.

``run(config)`` is what ``python -m experiments.run`` calls. ``Trainer.train()`` loops over
steps; each step

1. takes the next P prompt rows from a resumable iterator (``jaxgrpo.data.PromptIterator``);
2. runs one training step on them — ``jaxgrpo.step`` (read that file for the step itself:
   encode -> sample -> reward -> embed -> assemble -> advantages -> loss -> optax, on the host
   path or fused into one jit);
3. logs the metrics (``jaxgrpo.logger``: JSONL, TensorBoard, W&B; every ``log.every`` steps,
   averaged), and evaluates / checkpoints on schedule.

State that crosses steps is the ``TrainState`` pytree plus the iterator position: both are in
every checkpoint, so a resumed run continues exactly. SIGTERM / Ctrl-C finishes the current
step, saves a checkpoint and exits.
"""
from __future__ import annotations

import json
import os
import signal
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from flax import nnx

from jaxgrpo import run_dir as rdir
from jaxgrpo import sharding as shd
from jaxgrpo import executables
from jaxgrpo.checkpoint import Checkpointer
from jaxgrpo.config import validate
from jaxgrpo.data import PromptIterator
from jaxgrpo.errors import ConfigError
from jaxgrpo.env import build_env
from jaxgrpo.logger import MetricsLogger, MetricsWindow, to_python
from jaxgrpo.models.policy import eos_ids, load_policy, pad_id
from jaxgrpo.step import make_step
from jaxgrpo.lora import branch_supported, init_adapters, lora_config
from jaxgrpo.train import build_optimizer, init_train_state, policy_params, split_model

# Re-exported for callers of the old location (jaxgrpo.loop.load_policy / eos_ids / pad_id).
__all__ = ["Trainer", "run", "load_policy", "eos_ids", "pad_id"]


# ----------------------------------------------------------------------------- the run


class _Stop:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and exits after the current step."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n[jaxgrpo] signal {signum}: finishing this step, saving a checkpoint, exiting")

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


class Trainer:
    """The host resources of one run (model, data, step, logger, checkpoints); ``train()`` runs
    it. The training step itself is ``self.step`` (``jaxgrpo.step.make_step``)."""

    def __init__(self, config: mc.ConfigDict):
        c = validate(config, inputs=True)  # [run_dir hook] input checks before anything heavy
        self.c = c
        self.progress = rdir.Progress(c.log.progress)  # [run_dir hook]
        # Host files (config.json, metrics, samples, evaluations, summary) are written by
        # process 0 only; checkpoints by every process together (orbax). Every process decides
        # fresh / resume from the directory as it is before process 0 writes into it.
        self.writer = shd.is_primary_process()
        self.run = rdir.inspect(c)  # [run_dir hook] fresh, or resume after comparing configs
        shd.sync_processes("jaxgrpo:run_dir_inspected")
        if self.writer:
            rdir.write_config(self.run, c)
        self.run_dir = self.run.path
        self.mesh = shd.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
        self.progress(f"loading the model ({c.model.path or 'packaged default'})")  # [run_dir hook]
        model, self.tokenizer = load_policy(c)
        self.model_config = model.config
        self.pad_id = pad_id(self.tokenizer)
        self.eos_ids = eos_ids(model, self.tokenizer)
        model = shd.shard_model(model, self.mesh)
        self.graphdef, params, self.rest = split_model(model)
        self.tx = build_optimizer(c)
        # LoRA: the state trains the adapters; the base stays frozen beside it (and is the
        # reference policy). Otherwise the state trains every parameter.
        lora = lora_config(c)
        self.frozen = params if lora is not None else None
        if lora is not None:
            adapters = init_adapters(params, lora, jax.random.key(c.seed))
            if lora.dropout > 0 and not branch_supported(adapters):
                raise ConfigError(
                    f"config.lora.dropout={lora.dropout} runs the adapters unmerged, which only "
                    f"the decoder layers' projections support; config.lora.targets="
                    f"{lora.targets!r} also matches {sorted(set(adapters) - {'layers'})}")
            params = shd.shard_state(adapters, self.mesh)
        # The optimizer state built in one compiled program, directly in its layout (eagerly,
        # tx.init dispatched one op at a time: 1.5 s at SmolLM2-135M, quiet 2-core CPU).
        opt_shardings = shd.optimizer_state_shardings(jax.eval_shape(self.tx.init, params),
                                                      self.mesh)
        state = init_train_state(params, self.tx, c.seed, opt_shardings)
        # Every leaf on the mesh from the start, laid out as the update returns it (step and rng
        # replicated): the sampler and the update then see the same input shardings at every
        # step and compile once (an uncommitted rng key at step 1 recompiled both at step 2).
        rep = shd.replicated(self.mesh)
        state = state.replace(step=jax.device_put(state.step, rep),
                              rng=jax.device_put(state.rng, rep))
        self.state = state
        ref_params = (jax.tree.map(jnp.copy, params) if c.loss.beta > 0 and lora is None
                      else None)
        self.progress("building the prompts and the reward")  # [run_dir hook]
        self.env = build_env(c, self.tokenizer,
                             self.eos_ids[0] if self.eos_ids else self.pad_id)
        self.train_iter = PromptIterator(self.env.train_rows, seed=c.seed)
        self.step = make_step(c, graphdef=self.graphdef, rest=self.rest, tx=self.tx,
                              tokenizer=self.tokenizer, eos_ids=self.eos_ids, pad_id=self.pad_id,
                              env=self.env, mesh=self.mesh, ref_params=ref_params,
                              frozen=self.frozen)
        self.ckpt = Checkpointer(os.path.join(self.run_dir, "checkpoints"), keep=c.checkpoint.keep,
                                 async_save=c.checkpoint.async_save)
        self.logger = MetricsLogger(self.run_dir, c.log.tensorboard,
                                    c.to_dict() if c.log.wandb else None, enabled=self.writer)
        self.window = MetricsWindow(c.log.every)
        self.history: List[dict] = []

    def model_state(self, params=None):
        """The full nnx.State (params + constants) the sampler takes; with LoRA the adapters
        merged into the base."""
        params = self.state.params if params is None else params
        return nnx.merge_state(policy_params(self.c, params, self.frozen), self.rest)

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, step: int) -> Dict[str, Any]:
        from jaxgrpo.evaluate import evaluate_policy, run_eval_kwargs
        c = self.c
        rows = self.env.eval_rows[: c.eval.num_prompts]
        encoder = None
        if c.eval.embed_correct:
            from jaxgrpo.models.encoder import shared_encoder
            encoder = shared_encoder(c.embedding.encoder_path)
        res = evaluate_policy(
            self.graphdef, self.model_state(), self.tokenizer, rows, self.env.score,
            eos_token_ids=self.eos_ids, pad_token_id=self.pad_id,
            encoder=encoder, **run_eval_kwargs(c))
        metrics = res["metrics"]
        self.logger.log(step, metrics, kind="eval")
        if self.writer:
            with open(os.path.join(self.run_dir, f"eval_step{step}.jsonl"), "w") as f:
                for rec in res["records"]:
                    f.write(json.dumps(rec) + "\n")
        return metrics

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, step: int, block: bool = True):
        """``block=False``: the files are written in the background (checkpoint.async_save)."""
        self.progress(f"saving checkpoint {step}")  # [run_dir hook]
        self.ckpt.save(step, self.state, {"data_position": self.train_iter.position,
                                          "step": step, "config": self.c.to_dict()},
                       block=block or not self.c.checkpoint.async_save)

    def maybe_restore(self) -> int:
        if not self.c.checkpoint.resume or self.ckpt.latest_step() is None:
            return 0
        state, meta, step = self.ckpt.restore(self.state, fallback=self.c.checkpoint.fallback)
        self.state = state
        self.train_iter.position = int(meta["data_position"])
        print(f"[jaxgrpo] resumed from {self.ckpt.directory}/{step} "
              f"(data position {self.train_iter.position})")
        return step

    # -- the loop ----------------------------------------------------------------------------

    def train_step(self, step: int) -> Dict[str, Any]:
        """One training step (``self.step``) on the next rows; returns its metrics."""
        c = self.c
        rows = self.train_iter.next_batch(c.train.prompts_per_step)
        self.state, m, info = self.step(self.state, rows, more_rows=self.train_iter.next_batch)
        bad = [k for k, v in m.items() if not np.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"non-finite metrics at step {step + 1}: {bad}; the last checkpoint in "
                f"{self.ckpt.directory} is intact (step {self.ckpt.latest_step()})")
        if self.writer and c.log.samples_every and step % c.log.samples_every == 0:
            with open(os.path.join(self.run_dir, "samples.jsonl"), "a") as f:
                for text, row, r in zip(info["texts"], info["rows"], info["rewards"]):
                    f.write(json.dumps({"step": step + 1, "question": row["question"],
                                        "answer": str(row["answer"]), "completion": text,
                                        "reward": float(r)}) + "\n")
        return m

    def train(self, stop_at: Optional[int] = None) -> str:
        """Runs (or resumes) training to ``config.steps``. ``stop_at`` ends the run early at that
        step as a preemption would (checkpoint saved, no final evaluation)."""
        # The decoder's activation sharding constraints read this mesh when the jitted sampler
        # and update trace (jaxgrpo.sharding.constrain); without it they are no-ops.
        with jax.set_mesh(self.mesh):
            return self._train(stop_at)

    def _train(self, stop_at: Optional[int]) -> str:
        c = self.c
        start = self.maybe_restore()
        if self.writer:
            rdir.rewind(self.run_dir, start, redo_eval=start == 0 or start >= c.steps)  # [run_dir hook]
            rdir.record_changes(self.run, start)  # [run_dir hook]
        evals = {}
        if start == 0 and c.eval.before_training:
            self.progress("evaluating before training")  # [run_dir hook]
            evals[0] = self.evaluate(0)
        bar = _progress(total=c.steps, initial=start, enabled=c.log.progress)
        step = start
        with _Stop() as stop:
            while step < c.steps:
                if step == start:  # [run_dir hook]
                    self.progress(f"step {step + 1}: the first step compiles the sampler and update")
                m = self.train_step(step)
                step += 1
                if self.window.add(step, m):
                    self.logger.log(step, self.window.mean())
                self.history.append({"step": step, **m})
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward/mean']:.3f}", acc=f"{m['accuracy']:.2f}",
                                s_per_step=f"{m['time/step']:.1f}")
                if c.eval.every and step % c.eval.every == 0 and step < c.steps:
                    evals[step] = self.evaluate(step)
                preempt = stop.requested or (stop_at is not None and step >= stop_at)
                if len(self.window) and (preempt or step >= c.steps):
                    self.logger.log(step, self.window.mean())  # the partial last window
                if (c.checkpoint.every and step % c.checkpoint.every == 0) or preempt:
                    # In the background while training goes on, except the last before a stop
                    # or the end: that one is committed before anything else runs.
                    self.save(step, block=preempt or step >= c.steps)
                if preempt:
                    break
        bar.close()
        self.stopped_early = step < c.steps  # [run_dir hook] experiments/run.py's exit code
        if step >= c.steps:
            if self.ckpt.latest_step() != step:
                self.save(step)
            self.progress(f"evaluating after step {step}")  # [run_dir hook]
            evals[step] = self.evaluate(step)
            if self.writer:
                self.write_summary(evals)
        self.ckpt.close()
        self.logger.close()
        return self.run_dir

    def write_summary(self, evals: Dict[int, Dict[str, Any]]):
        from jaxgrpo.plotting import plot_run
        evals = {**rdir.evaluations(self.run_dir), **evals}  # [run_dir hook] earlier sittings too
        with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
            json.dump({"eval": {str(k): {kk: to_python(vv) for kk, vv in v.items()}
                                for k, v in evals.items()}}, f, indent=2)
        plot_run(self.run_dir)

    def close(self):
        self.env.close()
        executables.release()  # what the executable hook holds (jaxgrpo.executables)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
                dynamic_ncols=True)


def run(config: mc.ConfigDict) -> str:
    """Train as configured; returns the run directory."""
    trainer = Trainer(config)
    try:
        return trainer.train()
    finally:
        trainer.close()
