"""The host loop: data -> jitted sampling -> host verification -> jitted update, with logging,
evaluation and checkpoints.

``run(config)`` is what ``python -m experiments.run`` calls. Per step it

1. takes the next P prompts from a resumable iterator and tokenizes them (left-padded);
2. samples G completions per prompt with the jitted sampler (key = fold_in(seed key, step));
3. decodes and scores them on the host (task scorer or math-verify pool; weighted rewards);
4. builds the ``[P, G]`` ``Rollout`` (embeddings for DRA, anchors for DaGRPO) and calls the
   jitted pure ``update`` (advantages -> mu clipped-policy updates);
5. logs one metrics dict (JSONL, TensorBoard, progress bar), with per-stage timings.

State that crosses steps is the ``TrainState`` pytree plus the iterator position: both are in
every checkpoint, so a resumed run continues exactly. SIGTERM / Ctrl-C finishes the current
step, saves a checkpoint and exits.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from flax import nnx

from jaxgrpo import sharding as shd
from jaxgrpo.checkpoint import Checkpointer
from jaxgrpo.config import split_names, validate
from jaxgrpo.data import PromptIterator, decode_completions, encode_prompts
from jaxgrpo.rollout import Rollout
from jaxgrpo.sampling import SamplingConfig, make_sampler
from jaxgrpo.train import (advantage_fn_from_config, build_optimizer,
                           init_train_state, make_update_fn, rollout_from_sample, split_model)
from jaxgrpo.env import build_env


# ----------------------------------------------------------------------------- model & data


def load_policy(c: mc.ConfigDict):
    """(model, tokenizer) from config.model: real weights, or a random decoder of a small shape
    with the tokenizer of ``model.path`` (smoke runs and tests)."""
    from jaxgrpo.models import (Decoder, default_model_path, load_config, load_pretrained,
                                load_tokenizer)

    dtype = jnp.bfloat16 if c.model.dtype == "bfloat16" else jnp.float32
    path = c.model.path or str(default_model_path())
    if c.model.random_init_layers == 0:
        return load_pretrained(path, dtype=dtype)
    # A random decoder of a small shape; only the config and tokenizer are read (no weights).
    h = c.model.random_init_hidden
    cfg = dataclasses.replace(
        load_config(path), hidden_size=h, intermediate_size=2 * h,
        num_hidden_layers=c.model.random_init_layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=h // 4)
    return Decoder(cfg, dtype=dtype, rngs=nnx.Rngs(c.seed)), load_tokenizer(path)


def eos_ids(model, tokenizer) -> tuple:
    ids = set(model.config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    # Chat models end a turn with their end-of-turn token.
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return tuple(sorted(ids))


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


# ----------------------------------------------------------------------------- logging


class MetricsLogger:
    """JSONL always; TensorBoard and Weights & Biases when asked."""

    def __init__(self, run_dir: str, tensorboard: bool, wandb_config: Optional[dict] = None):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._f = open(self.path, "a")
        self._tb = None
        self._wandb = None
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
                from tensorboard.summary.writer.event_file_writer import EventFileWriter
                from tensorboard.compat.proto.event_pb2 import Event
                from tensorboard.compat.proto.summary_pb2 import Summary
                self._tb = (EventFileWriter(os.path.join(run_dir, "tb")), Event, Summary)
            except ImportError:
                self._tb = None

    def log(self, step: int, metrics: Dict[str, Any], kind: str = "train"):
        rec = {"step": step, "kind": kind, **{k: _py(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self._tb is not None:
            writer, Event, Summary = self._tb
            vals = [Summary.Value(tag=f"{kind}/{k}", simple_value=float(v))
                    for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"]
            writer.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=vals)))
            writer.flush()
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in rec.items()
                             if isinstance(v, (int, float)) and k != "step"}, step=step)

    def close(self):
        self._f.close()
        if self._tb is not None:
            self._tb[0].close()
        if self._wandb is not None:
            self._wandb.finish()


def _py(v):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


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


def make_run_dir(c: mc.ConfigDict) -> str:
    if c.run_dir:
        run_dir = c.run_dir
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = os.path.join("runs", f"{c.name}-{stamp}")
    os.makedirs(run_dir, exist_ok=True)
    return os.path.abspath(run_dir)


class Trainer:
    """Holds the compiled functions and host resources of one run; ``train()`` runs it."""

    def __init__(self, config: mc.ConfigDict):
        c = validate(config)
        self.c = c
        self.run_dir = make_run_dir(c)
        with open(os.path.join(self.run_dir, "config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=2))
        self.mesh = shd.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
        model, self.tokenizer = load_policy(c)
        self.model_config = model.config
        self.pad_id = pad_id(self.tokenizer)
        self.eos_ids = eos_ids(model, self.tokenizer)
        model = shd.shard_model(model, self.mesh)
        self.graphdef, params, self.rest = split_model(model)
        self.tx = build_optimizer(c)
        state = init_train_state(params, self.tx, c.seed)
        state = state.replace(opt_state=shd.shard_optimizer_state(state.opt_state, self.mesh))
        self.state = state
        self.ref_params = (jax.tree.map(jnp.copy, params) if c.loss.beta > 0 else None)
        self.env = build_env(c)
        self.train_iter = PromptIterator(self.env.train_rows, seed=c.seed)
        self.sampling_cfg = SamplingConfig(
            max_new_tokens=c.sampling.max_new_tokens, temperature=c.sampling.temperature,
            top_k=c.sampling.top_k, top_p=c.sampling.top_p, eos_token_ids=self.eos_ids,
            pad_token_id=self.pad_id, num_samples=c.sampling.num_generations)
        self._sampler = make_sampler(self.graphdef, self.sampling_cfg)
        self.advantages = jax.jit(advantage_fn_from_config(c))
        self.update = make_update_fn(c, self.graphdef, self.rest, self.tx)
        self.needs_embeddings = ("dra" in split_names(c.advantage.reward_transforms)
                                 or (c.advantage.baseline == "dagrpo"
                                     and c.advantage.options.dagrpo.distinctiveness == "cosine"))
        self._encoder = None
        self.ckpt = Checkpointer(os.path.join(self.run_dir, "checkpoints"), keep=c.checkpoint.keep)
        self.logger = MetricsLogger(self.run_dir, c.log.tensorboard,
                                    c.to_dict() if c.log.wandb else None)
        self.history: List[dict] = []

    # -- pieces ------------------------------------------------------------------------------

    def model_state(self, params=None):
        """The full nnx.State (params + constants) the sampler takes."""
        return nnx.merge_state(self.state.params if params is None else params, self.rest)

    def put_batch(self, x: np.ndarray) -> jax.Array:
        """Split the prompt axis over ('data', 'fsdp') when it divides; else replicate."""
        n = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        sharding = shd.batch_sharding(self.mesh) if x.shape[0] % n == 0 else shd.replicated(
            self.mesh)
        return jax.device_put(x, sharding)

    def step_key(self, step: int, salt: int = 0):
        key = jax.random.wrap_key_data(self.state.rng)
        return jax.random.fold_in(jax.random.fold_in(key, step), salt)

    def embed(self, texts: List[str], tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """L2-normalised completion embeddings [N, D]: the sentence encoder on the texts, or the
        policy's own mean-pooled final hidden states on the completion tokens alone."""
        if self.c.embedding.model == "policy":
            from jaxgrpo.models.encoder import mean_pool_normalize
            model = nnx.merge(self.graphdef, self.state.params, self.rest)
            h, _ = model.hidden_states(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
            return np.asarray(mean_pool_normalize(h, jnp.asarray(mask)))
        if self._encoder is None:
            from jaxgrpo.models.encoder import load_encoder
            self._encoder = load_encoder(self.c.embedding.encoder_path or None)
        return self._encoder.encode(texts)

    def rollout(self, rows: List[dict], step: int):
        """Sample, verify and assemble one ``Rollout`` (plus host-side info for logging)."""
        c, G = self.c, self.c.sampling.num_generations
        t0 = time.perf_counter()
        prompts, pmask, n_trunc = encode_prompts(self.tokenizer, rows, c.data, self.pad_id)
        out = self._sampler(self.model_state(), self.put_batch(prompts), self.put_batch(pmask),
                            self.step_key(step))
        out = jax.block_until_ready(out)
        t1 = time.perf_counter()
        ctoks, cmask = np.asarray(out.completion_tokens), np.asarray(out.completion_mask)
        texts = decode_completions(self.tokenizer, ctoks, cmask)
        rep_rows = [r for r in rows for _ in range(G)]
        scored = self.env.reward(texts, rep_rows, lengths=cmask.sum(-1),
                                 logprobs=np.asarray(out.logprobs), mask=cmask)
        t2 = time.perf_counter()
        emb = None
        if self.needs_embeddings:
            emb = self.embed(texts, ctoks, cmask)
        ro = rollout_from_sample(out, scored.rewards, scored.correct,
                                 fine_scores=scored.fine_scores, embeddings=emb)
        if c.anchors.enabled:
            ro = self.add_anchors(ro, rows, emb_dim=None if emb is None else emb.shape[-1])
        ro = jax.block_until_ready(ro)
        t3 = time.perf_counter()
        info = dict(texts=texts, rows=rep_rows, rewards=np.asarray(scored.rewards),
                    correct=np.asarray(scored.correct), components=scored.components,
                    stats=scored.stats, prompts_truncated=n_trunc,
                    n_tokens=int(cmask.sum()), truncated=float(np.mean(np.asarray(out.truncated))),
                    time_sample=t1 - t0, time_reward=t2 - t1, time_embed=t3 - t2)
        return ro, info

    def add_anchors(self, ro: Rollout, rows: List[dict], emb_dim) -> Rollout:
        """DaGRPO off-policy anchors: the gold solution as an extra group member."""
        from jaxgrpo.advantages.dagrpo import add_anchors
        texts = [self.env.anchor_text(r, self.c.anchors.format) for r in rows]
        tc = ro.completion_tokens.shape[-1]
        eos = self.eos_ids[0] if self.eos_ids else self.pad_id
        toks = np.full((len(rows), tc), self.pad_id, np.int32)
        mask = np.zeros((len(rows), tc), bool)
        for i, t in enumerate(texts):
            ids = (self.tokenizer.encode(t, add_special_tokens=False) + [eos])[:tc]
            toks[i, :len(ids)] = ids
            mask[i, :len(ids)] = True
        emb = None if emb_dim is None else jnp.asarray(self.embed(texts, toks, mask))
        # The anchor is scored by the same reward functions as the group (a correct solution
        # need not get reward 1 when format / length terms are in the reward).
        scored = self.env.reward(texts, rows, lengths=mask.sum(-1))
        fine = 1.0 if scored.fine_scores is None else jnp.asarray(scored.fine_scores)
        return add_anchors(ro, jnp.asarray(toks), jnp.asarray(mask), anchor_embeddings=emb,
                           anchor_reward=jnp.asarray(scored.rewards), anchor_fine_score=fine,
                           trigger=self.c.anchors.trigger)

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, step: int) -> Dict[str, Any]:
        from jaxgrpo.evaluate import evaluate_policy
        c = self.c
        ks = tuple(int(k) for k in split_names(c.eval.ks))
        rows = self.env.eval_rows[: c.eval.num_prompts]
        res = evaluate_policy(
            self.graphdef, self.model_state(), self.tokenizer, rows, self.env.score,
            num_samples=c.eval.num_samples, ks=ks, max_new_tokens=c.sampling.max_new_tokens,
            temperature=c.eval.temperature, eos_token_ids=self.eos_ids, pad_token_id=self.pad_id,
            template=c.data.template, prompt_format=c.data.prompt_format,
            system_prompt=c.data.system_prompt, max_prompt_tokens=c.data.max_prompt_tokens,
            key=jax.random.key(c.seed + 1))  # same eval key every time: comparable numbers
        metrics = res["metrics"]
        self.logger.log(step, metrics, kind="eval")
        with open(os.path.join(self.run_dir, f"eval_step{step}.jsonl"), "w") as f:
            for rec in res["records"]:
                f.write(json.dumps(rec) + "\n")
        return metrics

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, step: int):
        self.ckpt.save(step, self.state, {"data_position": self.train_iter.position,
                                          "step": step, "config": self.c.to_dict()})

    def maybe_restore(self) -> int:
        if not self.c.checkpoint.resume or self.ckpt.latest_step() is None:
            return 0
        state, meta, step = self.ckpt.restore(self.state)
        self.state = state
        self.train_iter.position = int(meta["data_position"])
        print(f"[jaxgrpo] resumed from {self.ckpt.directory}/{step} "
              f"(data position {self.train_iter.position})")
        return step

    # -- the loop ----------------------------------------------------------------------------

    def train_step(self, step: int) -> Dict[str, Any]:
        c = self.c
        t0 = time.perf_counter()
        rows = self.train_iter.next_batch(c.train.prompts_per_step)
        ro, info = self.rollout(rows, step)
        t1 = time.perf_counter()
        adv, adv_diag = jax.block_until_ready(self.advantages(ro))
        t_adv = time.perf_counter()
        self.state, metrics = self.update(self.state, ro, self.ref_params, adv)
        metrics = jax.device_get({**metrics, **adv_diag})  # the one host transfer of the step
        t2 = time.perf_counter()
        if not all(np.isfinite(v) for v in jax.tree.leaves(metrics)):
            bad = [k for k, v in metrics.items() if not np.all(np.isfinite(v))]
            raise FloatingPointError(
                f"non-finite metrics at step {step}: {bad}; the last checkpoint in "
                f"{self.ckpt.directory} is intact (step {self.ckpt.latest_step()})")
        m = {k: float(v) for k, v in metrics.items()}
        for name, comp in info["components"].items():
            m[f"reward/{name}"] = float(np.mean(comp))
        m.update({f"verify/{k}": float(v) for k, v in info["stats"].items()})
        step_time = t2 - t0
        m.update({"time/sample": info["time_sample"], "time/reward": info["time_reward"],
                  "time/embed": info["time_embed"], "time/advantages": t_adv - t1,
                  "time/update": t2 - t_adv,
                  "time/step": step_time, "tokens_per_s": info["n_tokens"] / step_time,
                  "sample/truncated_frac": info["truncated"],
                  "data/prompts_truncated": info["prompts_truncated"]})
        if c.log.samples_every and step % c.log.samples_every == 0:
            with open(os.path.join(self.run_dir, "samples.jsonl"), "a") as f:
                for text, row, r in zip(info["texts"], info["rows"], info["rewards"]):
                    f.write(json.dumps({"step": step, "question": row["question"],
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
        evals = {}
        if start == 0:
            evals[0] = self.evaluate(0)
        bar = _progress(total=c.steps, initial=start, enabled=c.log.progress)
        step = start
        with _Stop() as stop:
            while step < c.steps:
                m = self.train_step(step)
                step += 1
                self.logger.log(step, m)
                self.history.append({"step": step, **m})
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward/mean']:.3f}", acc=f"{m['accuracy']:.2f}",
                                s_per_step=f"{m['time/step']:.1f}")
                if c.eval.every and step % c.eval.every == 0 and step < c.steps:
                    evals[step] = self.evaluate(step)
                preempt = stop.requested or (stop_at is not None and step >= stop_at)
                if (c.checkpoint.every and step % c.checkpoint.every == 0) or preempt:
                    self.save(step)
                if preempt:
                    break
        bar.close()
        if step >= c.steps:
            if self.ckpt.latest_step() != step:
                self.save(step)
            evals[step] = self.evaluate(step)
            self.write_summary(evals)
        self.ckpt.close()
        self.logger.close()
        return self.run_dir

    def write_summary(self, evals: Dict[int, Dict[str, Any]]):
        from jaxgrpo.plotting import plot_run
        with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
            json.dump({"eval": {str(k): {kk: _py(vv) for kk, vv in v.items()}
                                for k, v in evals.items()}}, f, indent=2)
        plot_run(self.run_dir)

    def close(self):
        self.env.close()


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
