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
import signal
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from flax import nnx

from jaxgrpo import paths
from jaxgrpo import run_dir as rdir
from jaxgrpo import sharding as shd
from jaxgrpo import executables
from jaxgrpo.checkpoint import Checkpointer
from jaxgrpo.experiment import validate
from jaxgrpo.data import PromptIterator
from jaxgrpo.errors import ConfigError
from jaxgrpo.env import build_env
from jaxgrpo.logger import MetricsLogger, MetricsWindow, to_python
from jaxgrpo.models.policy import eos_ids, load_policy, pad_id
from jaxgrpo.step import make_step
from jaxgrpo.lora import branch_supported, init_adapters, lora_config
from jaxgrpo.micro_batch import choose_grad_accum, require_candidates, with_grad_accum
from jaxgrpo.train import build_optimizer, init_train_state, policy_params, split_model

# Re-exported for callers of the old location (jaxgrpo.loop.load_policy / eos_ids / pad_id).
__all__ = ["Trainer", "run", "load_policy", "eos_ids", "pad_id", "preflight", "StopRequested",
           "stop_signals"]


# ----------------------------------------------------------------------------- the run


class StopRequested(Exception):
    """SIGTERM / SIGINT outside the training loop (loading, an evaluation, the final save):
    raised at once; the run exits 75 after finishing what it was saving."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class stop_signals:
    """For a whole run (``experiments.run``): SIGTERM / SIGINT raise :class:`StopRequested`
    (a second one: KeyboardInterrupt). Inside the training loop :class:`_Stop` takes over and
    turns the first one into "finish this step, save, exit"."""

    def __init__(self):
        self._old = {}
        self.count = 0

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.count += 1
        if self.count > 1:
            raise KeyboardInterrupt
        raise StopRequested(signum)

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


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
        self.lock = None
        self.ckpt = None
        preflight(c)  # every check that can run before the model loads, before any write
        # Host files (config.json, metrics, samples, evaluations, summary) are written by
        # process 0 only, under the run directory's lock; checkpoints by every process together
        # (orbax). Every process decides fresh / resume from the directory as it is before
        # process 0 writes into it.
        self.writer = shd.is_primary_process()
        path = rdir.resolve_path(c)
        try:
            if self.writer:
                self.lock = rdir.RunLock(path).acquire()  # one writer per run directory
            self.run = rdir.inspect(c, path, unlock_unstarted=True)  # [run_dir hook]
            shd.sync_processes("jaxgrpo:run_dir_inspected")
            if self.writer:
                rdir.write_config(self.run, c)
            self.run_dir = self.run.path
            self._build()
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self.ckpt is not None:
            self.ckpt.finish()
        if getattr(self, "env", None) is not None:
            self.env.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build(self) -> None:
        c = self.c
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
            if lora.dropout > 0 and not branch_supported(adapters):  # (preflight checks first)
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
        if c.train.grad_accum == 0:  # auto: from the compiled update's memory (jaxgrpo.micro_batch)
            self.progress("choosing train.grad_accum (compiling the update ahead of time)")
            choice = choose_grad_accum(c, graphdef=self.graphdef, rest=self.rest, tx=self.tx,
                                       state=state, hidden_size=self.model_config.hidden_size,
                                       mesh=self.mesh, ref_params=ref_params, frozen=self.frozen)
            print(f"[jaxgrpo] {choice.describe()}", flush=True)
            c = with_grad_accum(c, choice.grad_accum)
        self.grad_accum = c.train.grad_accum
        self.step = make_step(c, graphdef=self.graphdef, rest=self.rest, tx=self.tx,
                              tokenizer=self.tokenizer, eos_ids=self.eos_ids, pad_id=self.pad_id,
                              env=self.env, mesh=self.mesh, ref_params=ref_params,
                              frozen=self.frozen)
        self.ckpt = Checkpointer(paths.join(self.run_dir, "checkpoints"), keep=c.checkpoint.keep,
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
            paths.write_text(paths.join(self.run_dir, f"eval_step{step}.jsonl"),
                             "".join(json.dumps(rec) + "\n" for rec in res["records"]))
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
        if bad:  # _train adds which checkpoint is committed, once the background save is done
            raise FloatingPointError(f"non-finite metrics at step {step + 1}: {bad}")
        if self.writer and c.log.samples_every and step % c.log.samples_every == 0:
            f = paths.AppendFile(paths.join(self.run_dir, "samples.jsonl"))
            try:
                for text, row, r in zip(info["texts"], info["rows"], info["rewards"]):
                    f.write(json.dumps({"step": step + 1, "question": row["question"],
                                        "answer": str(row["answer"]), "completion": text,
                                        "reward": float(r)}) + "\n")
            finally:
                f.close()
        return m

    def train(self, stop_at: Optional[int] = None) -> str:
        """Runs (or resumes) training to ``config.steps``. ``stop_at`` ends the run early at that
        step as a preemption would (checkpoint saved, no final evaluation)."""
        # The decoder's activation sharding constraints read this mesh when the jitted sampler
        # and update trace (jaxgrpo.sharding.constrain); without it they are no-ops.
        with jax.set_mesh(self.mesh):
            return self._train(stop_at)

    def _train(self, stop_at: Optional[int]) -> str:
        try:
            return self._train_steps(stop_at)
        except BaseException as e:
            self._finish_saves(e)
            raise

    def _finish_saves(self, e: BaseException) -> None:
        """On an error exit: waits for an in-flight background save (so nothing is left half
        written when the interpreter shuts down), then names the newest checkpoint that is
        actually committed. A non-finite stop re-raises with it in the message; a failed save
        replaces the error (it is the first thing that went wrong on disk)."""
        committed, save_err = self.ckpt.finish()
        where = (f"the newest committed checkpoint in {self.ckpt.directory} is step {committed}"
                 if committed is not None else
                 f"no checkpoint is committed in {self.ckpt.directory} yet")
        if save_err is not None and not isinstance(e, KeyboardInterrupt):
            raise save_err from None
        if isinstance(e, FloatingPointError):
            raise FloatingPointError(f"{e}; {where} (resume from it with the same command, "
                                     "after lowering optim.lr or the like)") from None

    def _train_steps(self, stop_at: Optional[int]) -> str:
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
                self.ckpt.check()  # a failed background save stops the run now
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
        paths.write_atomic(paths.join(self.run_dir, "summary.json"), json.dumps(
            {"eval": {str(k): {kk: to_python(vv) for kk, vv in v.items()}
                      for k, v in evals.items()}}, indent=2))
        plot_run(self.run_dir)

    def close(self):
        """Releases the run's resources; an in-flight background save is finished first (an
        exit with it pending would lose it). Idempotent."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            if self.ckpt is not None:
                self.ckpt.finish()
            self.env.close()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
        executables.release()  # what the executable hook holds (jaxgrpo.executables)


def abstract_param_paths(c) -> List[Tuple[str, tuple]]:
    """(path, shape) of every parameter of the decoder ``config.model`` builds, from an abstract
    model (``nnx.eval_shape``: shapes only, no weights read or allocated). ConfigError naming
    config.model.path when it holds no model config."""
    import dataclasses as dc

    from flax import nnx

    from jaxgrpo.errors import CheckpointError, ConfigError
    from jaxgrpo.models import default_model_path
    from jaxgrpo.models.decoder import Decoder
    from jaxgrpo.models.loading import load_config
    from jaxgrpo.lora import _leaves

    path = c.model.path or str(default_model_path())
    try:
        cfg = load_config(path)
    except (CheckpointError, OSError, ValueError) as e:
        raise ConfigError(f"config.model.path={path!r}: not a model ({str(e).splitlines()[0]})"
                          ) from None
    if c.model.random_init_layers:
        h = c.model.random_init_hidden
        cfg = dc.replace(cfg, hidden_size=h, intermediate_size=2 * h,
                         num_hidden_layers=c.model.random_init_layers, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=h // 4)
    model = nnx.eval_shape(lambda: Decoder(cfg, dtype=jnp.float32, param_dtype=jnp.float32,
                                           rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    return [(name, tuple(getattr(leaf, "shape", ()))) for name, leaf in _leaves(params)]


def check_mesh_layout(c, n_devices: Optional[int] = None) -> Tuple[int, int, int]:
    """Preflight (before the model loads): the mesh with its -1 axis resolved against the
    device count, and the training micro-batches (whole groups, anchors included) divided over
    its batch devices (mesh.data * mesh.fsdp) -- the check ``config.validate`` can only make for
    explicit sizes. Returns the resolved (data, fsdp, tensor); ConfigError naming the keys."""
    from jaxgrpo.experiment import check_micro_batch

    if n_devices is None:
        n_devices = jax.device_count()
    data, fsdp, tensor = shd.resolved_mesh_sizes(c.mesh.data, c.mesh.fsdp, c.mesh.tensor,
                                                 n_devices)
    group = c.sampling.num_generations + (1 if c.anchors.enabled else 0)
    if c.train.grad_accum == 0:  # auto: chosen after the model loads, among the allowed counts
        require_candidates(c, data * fsdp)
    else:
        check_micro_batch(c.train.prompts_per_step * group, group,
                          c.train.num_minibatches * c.train.grad_accum, data * fsdp)
    return data, fsdp, tensor


def preflight(c: mc.ConfigDict) -> None:
    """The checks that need the devices, the model's parameter paths (an abstract shape, no
    weights) or the data rows, run before anything is written or loaded: the mesh with its -1
    axis resolved (:func:`check_mesh_layout`), LoRA targets and dropout
    (``lora.check_lora``), the reward against the fused path and the digit golds
    (``env.check_rewards``). ConfigError naming the key."""
    from jaxgrpo.env import check_rewards
    from jaxgrpo.lora import check_lora

    check_mesh_layout(c)
    check_lora(c, abstract_param_paths(c) if c.lora.rank else [])
    check_rewards(c)


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
