"""One training step, top to bottom: collect a Rollout, then update the policy on it.

    rows ─► encode ─► sample ─► reward ─► embed ─► assemble ─┐  ┌► advantages ─► loss ─► optax
           (host)    (jit)     (host, or (policy   (Rollout;  │  │  (the config's (clipped  (AdamW)
                                tokens)   or        anchors)  │  │   chain)       surrogate)
                                          encoder)            │  │
           ─────────── collect(state, rows) -> Rollout ───────┘  └─ update(state, rollout) ─────

:func:`make_step` builds the pieces once, as purejaxrl's ``make_train(config)`` does:

* ``step.collect(state, rows) -> (rollout, info)``: P prompt rows -> the ``[P, G]`` Rollout
  (``jaxgrpo.rollout``), plus host-side ``info`` for the log (texts, reward components, timings).
* ``step.update(state, rollout) -> (state, metrics)``: ONE jitted pure function; the advantages
  are computed inside it from the rollout by the configured chain (``jaxgrpo.advantages``), then
  mu clipped-policy updates (``jaxgrpo.train.make_update_fn``).
* ``step.fused(state, rows) -> (state, rollout, metrics)``: collect and update as ONE jit, for a
  reward computable from token ids (``config.train.fused``, ``config.rewards.verifier='digits'``).
* ``step(state, rows) -> (state, metrics, info)``: the configured path, with per-stage timings.

Both paths derive the sampling key one way (:func:`sample_key`), compute the same extras — what
the chain reads from the rollout (:func:`rollout_needs`: embeddings, fine scores, prompt
log-probs, the question-token mask, from ``jaxgrpo.advantages.required_inputs``) — assemble the
rollout with one function (:func:`assemble`), report with one info builder (:func:`step_info`)
and one metrics builder (:func:`step_metrics`), so they give the same metrics on the same seed
(tests/test_step.py). Compiled functions go through ``jaxgrpo.executables.wrap`` (the identity
unless an entry point installed a wrapper).

Where things go:

* a new advantage method: ``jaxgrpo/advantages/`` (register it in ``registry.py``, declare what
  it reads from the rollout with ``needs=`` there); it is then a config choice with typed options.
* a new reward: ``jaxgrpo/rewards/`` and its wiring in ``jaxgrpo/env.py`` (``Env.reward``); a
  reward computable from tokens is an ``Env.token_reward`` and can run fused.
* a new loss or aggregation: ``jaxgrpo/losses.py`` (called by ``jaxgrpo.train.make_loss_fn``).

The host driver around the step (data, logging, evaluation, checkpoints) is
``jaxgrpo.loop.Trainer``.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections as mc
import numpy as np
from flax import nnx
from jax.experimental import checkify

from jaxgrpo import sharding as shd
from jaxgrpo import executables
from jaxgrpo.advantages import add_anchors, required_inputs
from jaxgrpo.data import decode_completions, encode_prompts, question_token_mask
from jaxgrpo.env import Env, sequence_probability
from jaxgrpo.errors import ConfigError
from jaxgrpo.rollout import (Anchors, Rollout, completion_width, concat_groups, encode_anchors,
                             group_has_spread, rollout_from_sample, take_groups, trim_completions)
from jaxgrpo.sampling import SamplingConfig, make_sampler
from jaxgrpo.train import (StateShardedJit, TrainState, advantage_chain,
                           advantage_fn_from_config, make_update_fn, policy_params)

__all__ = ["sample_key", "rollout_needs", "assemble", "step_info", "merge_infos",
           "step_metrics", "make_step", "Step"]


# ----------------------------------------------------------------------------- the key

def sample_key(state: TrainState) -> jax.Array:
    """The sampling key of the step ``state.step``: ``fold_in(key(state.rng), state.step)``.

    The one derivation, used by the host path and inside the fused jit alike; ``state.step``
    counts completed steps and is checkpointed, so a resumed run draws the same samples."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


# ----------------------------------------------------------------------------- what to compute

def rollout_needs(c: mc.ConfigDict) -> FrozenSet[str]:
    """The ``Rollout`` extras the configured chain reads (``jaxgrpo.advantages.required_inputs``),
    checked against what the config can provide (ConfigError naming the key otherwise)."""
    need = required_inputs(*advantage_chain(c))
    if "fine_scores" in need and c.rewards.fine_score == "none":
        raise ConfigError("config.rewards.fine_score='none', but the advantage chain ranks by fine "
                          "scores (DaGRPO score='fine'): set rewards.fine_score to 'logprob' or "
                          "'format', or advantage.options.dagrpo.score='reward'")
    return need


def _checks_nonfinite(c: mc.ConfigDict) -> bool:
    """True when a transform of the chain has ``nonfinite='check'`` (a checkify check)."""
    *_, options = advantage_chain(c)
    return any(opts.get("nonfinite") == "check" for opts in options.values())


# ----------------------------------------------------------------------------- stage functions

def make_policy_embed(graphdef, rest) -> Callable:
    """``embed(params, tokens [N, T], mask [N, T]) -> float32 [N, D]``: the policy's own
    mean-pooled, L2-normalised final hidden states of the completion tokens alone (DRA's
    zero-cost alternative to a sentence encoder, ``embedding.model='policy'``). Pure."""
    from jaxgrpo.models.encoder import mean_pool_normalize

    def embed(params, tokens, mask):
        model = nnx.merge(graphdef, params, rest)
        h, _ = model.hidden_states(tokens, attention_mask=mask)
        return jax.lax.stop_gradient(mean_pool_normalize(h, mask))

    return embed


def _jit_checked(fn: Callable, check: bool, donate=()) -> Callable:
    """``jax.jit(fn)``; with ``check`` the function is functionalised by ``checkify`` first (user
    checks, e.g. ``nonfinite='check'``) and a failed check raises on the host."""
    if not check:
        return jax.jit(fn, donate_argnums=donate)
    jitted = jax.jit(checkify.checkify(fn, errors=checkify.user_checks), donate_argnums=donate)

    def run(*args):
        err, out = jitted(*args)
        err.throw()
        return out

    return run


# ----------------------------------------------------------------------------- shared stages

def assemble(out, rewards, correct, *, fine_scores=None, embeddings=None, question_mask=None,
             anchors: Optional[Anchors] = None, trigger: str = "none_correct") -> Rollout:
    """Stage ``assemble`` of both paths: a ``SampleOutput`` (P prompts x G rows) and per-row
    rewards / correctness [P*G] (fine scores [P*G], embeddings [P*G, D] when the chain reads
    them) -> the ``[P, G]`` Rollout, with the question-token mask [P, Tp] when given and, with
    ``anchors``, DaGRPO's anchor as member G where ``trigger`` fires (``[P, G + 1]``,
    ``jaxgrpo.advantages.add_anchors``). Pure ``jnp``: the host path calls it eagerly, the
    fused path inside its jit."""
    ro = rollout_from_sample(out, rewards, correct, fine_scores=fine_scores,
                             embeddings=embeddings)
    if question_mask is not None:
        ro = ro.replace(question_mask=question_mask)
    if anchors is not None:
        ro = add_anchors(ro, anchors.tokens, anchors.mask, anchor_embeddings=anchors.embeddings,
                         anchor_reward=anchors.rewards, anchor_fine_score=anchors.fine_scores,
                         trigger=trigger)
    return ro


def step_info(*, texts: List[str], rows: List[dict], rewards, components: Dict[str, Any],
              stats: Dict[str, Any], prompts_truncated: int, n_tokens: int, truncated: float,
              times: Dict[str, float], dynamic: Optional[Dict[str, float]] = None
              ) -> Dict[str, Any]:
    """The host-side info of one step, for the log: completion texts and their rows [P*G],
    rewards [P*G], reward components {name: [P*G]}, verifier stats, prompts cut by the length
    limit, valid completion tokens, the fraction of completions without an EOS, stage times,
    and (dynamic sampling) its counters."""
    info = dict(texts=texts, rows=rows, rewards=rewards, components=components, stats=stats,
                prompts_truncated=prompts_truncated, n_tokens=n_tokens, truncated=truncated,
                times=times)
    if dynamic is not None:
        info["dynamic"] = dynamic
    return info


def merge_infos(infos: List[Dict[str, Any]], dynamic: Dict[str, float]) -> Dict[str, Any]:
    """The :func:`step_info` of several sampling rounds of one step: every completion's texts,
    rows, rewards and components, summed counts and times, the mean truncated fraction."""
    first = infos[0]
    return step_info(
        texts=sum((i["texts"] for i in infos), []), rows=sum((i["rows"] for i in infos), []),
        rewards=np.concatenate([np.asarray(i["rewards"]) for i in infos]),
        components={k: np.concatenate([np.asarray(i["components"][k]) for i in infos])
                    for k in first["components"]},
        stats={k: sum(i["stats"].get(k, 0) for i in infos) for k in first["stats"]},
        prompts_truncated=sum(i["prompts_truncated"] for i in infos),
        n_tokens=sum(i["n_tokens"] for i in infos),
        truncated=float(np.mean([i["truncated"] for i in infos])),
        times={k: sum(i["times"][k] for i in infos) for k in first["times"]}, dynamic=dynamic)


def step_metrics(metrics: Dict[str, Any], info: Dict[str, Any], elapsed: float
                 ) -> Dict[str, float]:
    """The logged metrics of one step: the update's (host values), the mean of each reward
    component (``reward/<name>``), verifier stats (``verify/...``), stage times, dynamic
    sampling counters, the step time, throughput, truncation fractions."""
    m = {k: float(v) for k, v in metrics.items()}
    for name, comp in info["components"].items():
        m[f"reward/{name}"] = float(np.mean(comp))
    m.update({f"verify/{k}": float(v) for k, v in info["stats"].items()})
    m.update(info["times"])
    m.update(info.get("dynamic", {}))
    m.update({"time/step": elapsed, "tokens_per_s": info["n_tokens"] / elapsed,
              "sample/truncated_frac": info["truncated"],
              "data/prompts_truncated": info["prompts_truncated"]})
    return m


# ----------------------------------------------------------------------------- the step

class Step:
    """The pieces of one training step for a config (built by :func:`make_step`).

    Attributes (functions, replaceable in tests):
      collect: ``(state, rows) -> (Rollout, info)``, the host path's collection.
      update: ``(state, rollout) -> (state, metrics)``, jitted, advantages inside.
      fused: ``(state, rows) -> (state, Rollout, metrics)``, one jit; None when the reward is not
        computable from tokens or an extra needs the host.
      time_advantages: the host path also runs the chain alone, jitted, to log
        ``time/advantages`` (off by default: the update computes the advantages itself).
    """

    def __init__(self, c: mc.ConfigDict, *, graphdef, rest, tx, tokenizer, eos_ids, pad_id: int,
                 env: Env, mesh=None, ref_params=None, frozen=None,
                 time_advantages: bool = False):
        self.c, self.env, self.tokenizer, self.mesh = c, env, tokenizer, mesh
        self.graphdef, self.rest, self.ref_params = graphdef, rest, ref_params
        # LoRA: the frozen base the adapters (state.params) are merged into (None otherwise).
        self.frozen = frozen
        self._policy_params = jax.jit(lambda p, f: policy_params(c, p, f))
        self.eos_ids, self.pad_id = tuple(eos_ids), int(pad_id)
        self.needs = rollout_needs(c)
        self.anchors = bool(c.anchors.enabled)
        self.group = c.sampling.num_generations
        self.time_advantages = time_advantages
        self._check = _checks_nonfinite(c)
        # Compiled functions go through the entry point's executable hook (jaxgrpo.executables;
        # the identity unless one was installed). The rollout sampler: config.sampling, and the
        # prompt log-prob pass only when the chain reads prompt_logprobs.
        self.sampler = executables.wrap(make_sampler(graphdef, SamplingConfig.from_config(
            c.sampling, eos_token_ids=self.eos_ids, pad_token_id=self.pad_id,
            return_prompt_logprobs="prompt_logprobs" in self.needs,
            prompt_logprobs_chunk=c.train.logits_chunk or None)))
        self._policy_embed = make_policy_embed(graphdef, rest)
        self._policy_embed_jit = jax.jit(self._policy_embed)
        # The update as a pure function, and jitted (donating the state) so that the state
        # comes back with the shardings it went in with (no recompile at step 2,
        # ``StateShardedJit``); with checkify (a plain jit) when a transform checks for
        # non-finite rewards.
        self._update_fn = make_update_fn(c, graphdef, rest, tx, jit=False, mesh=mesh)
        self._update_jit = (_jit_checked(self._update_fn, True, donate=(0,)) if self._check else
                            executables.wrap(make_update_fn(c, graphdef, rest, tx, mesh=mesh),
                                             donates_state=True))
        self._advantages_jit = None  # built on first use (time_advantages)
        self._fused_jit = (self._make_fused_jit()
                           if env.token_reward is not None and self._fusable() else None)
        self.fused = None
        if self._fused_jit is not None:
            self.fused = lambda state, rows: self._fused_run(state, rows)[:3]

    # -- host pieces -------------------------------------------------------------------------

    def policy_params(self, state: TrainState):
        """The decoder's full parameters of ``state`` (LoRA: adapters merged into the base)."""
        if self.frozen is None:
            return state.params
        return self._policy_params(state.params, self.frozen)

    def put_batch(self, x: np.ndarray) -> jax.Array:
        """Split the prompt axis over ('data', 'fsdp') when it divides; else replicate."""
        if self.mesh is None:
            return jnp.asarray(x)
        n = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        sharding = (shd.batch_sharding(self.mesh) if x.shape[0] % n == 0
                    else shd.replicated(self.mesh))
        return jax.device_put(x, sharding)

    def encode(self, rows: List[dict]):
        """Stage ``encode``: rows -> left-padded prompt ids / mask [P, Tp] (host)."""
        return encode_prompts(self.tokenizer, rows, self.c.data, self.pad_id)

    def question_mask(self, rows: List[dict], width: int) -> Optional[jax.Array]:
        """bool [P, width]: each prompt's question tokens (ProGRPO ``prompt_tokens='question'``),
        None when the chain does not read it."""
        if "question_mask" not in self.needs:
            return None
        return jnp.asarray(question_token_mask(self.tokenizer, rows, self.c.data, width))

    def embed(self, params, texts: List[str], tokens, mask) -> jax.Array:
        """Stage ``embed``: L2-normalised completion embeddings [N, D], by the policy's hidden
        states or the sentence encoder on the texts (``config.embedding.model``)."""
        if self.c.embedding.model == "policy":
            return self._policy_embed_jit(params, jnp.asarray(tokens), jnp.asarray(mask))
        from jaxgrpo.models.encoder import shared_encoder
        return jnp.asarray(shared_encoder(self.c.embedding.encoder_path).encode(texts))

    def _anchor_tokens(self, rows: List[dict]):
        texts = [self.env.anchor_text(r, self.c.anchors.format) for r in rows]
        eos = self.eos_ids[0] if self.eos_ids else self.pad_id
        toks, mask = encode_anchors(self.tokenizer, texts, self.c.sampling.max_new_tokens, eos,
                                    self.pad_id)
        return texts, toks, mask

    def host_anchors(self, params, rows: List[dict]) -> Anchors:
        """DaGRPO anchors of the host path: the gold solution per row, scored by the run's
        reward functions (a correct solution need not get reward 1 when format / length terms
        are in the reward), embedded like the group when the chain reads embeddings."""
        texts, toks, mask = self._anchor_tokens(rows)
        scored = self.env.reward(texts, rows, lengths=mask.sum(-1), tokens=toks, mask=mask)
        fine = (jnp.ones(len(rows), jnp.float32) if scored.fine_scores is None
                else jnp.asarray(scored.fine_scores))
        emb = self.embed(params, texts, toks, mask) if "embeddings" in self.needs else None
        return Anchors(tokens=jnp.asarray(toks), mask=jnp.asarray(mask),
                       rewards=jnp.asarray(scored.rewards), fine_scores=fine, embeddings=emb)

    def collect(self, state: TrainState, rows: List[dict], round_: int = 0
                ) -> Tuple[Rollout, Dict[str, Any]]:
        """Stages encode -> sample -> reward -> embed -> assemble on the host path. ``round_``
        > 0: a further sampling round of the same step (dynamic sampling; its own key)."""
        key = sample_key(state)
        if round_:
            key = jax.random.fold_in(key, round_)
        t0 = time.perf_counter()
        prompts, pmask, n_trunc = self.encode(rows)                                   # encode
        params = self.policy_params(state)
        out = self.sampler(nnx.merge_state(params, self.rest), self.put_batch(prompts),
                           self.put_batch(pmask), key)                                # sample
        out = jax.block_until_ready(out)
        t1 = time.perf_counter()
        # to_host: a plain copy on one host; gathers the other hosts' rows on several.
        ctoks, cmask, lps, trunc = shd.to_host((out.completion_tokens, out.completion_mask,
                                                out.logprobs, out.truncated))
        texts = decode_completions(self.tokenizer, ctoks, cmask)
        rep_rows = [r for r in rows for _ in range(self.group)]
        fine_needed = "fine_scores" in self.needs
        scored = self.env.reward(                                                     # reward
            texts, rep_rows, lengths=cmask.sum(-1), tokens=ctoks, mask=cmask,
            logprobs=lps if fine_needed else None)
        t2 = time.perf_counter()
        emb = (self.embed(params, texts, ctoks, cmask) if "embeddings" in self.needs
               else None)                                                             # embed
        ro = assemble(out, scored.rewards, scored.correct,                            # assemble
                      fine_scores=scored.fine_scores if fine_needed else None, embeddings=emb,
                      question_mask=self.question_mask(rows, prompts.shape[1]),
                      anchors=self.host_anchors(params, rows) if self.anchors else None,
                      trigger=self.c.anchors.trigger)
        ro = jax.block_until_ready(ro)
        t3 = time.perf_counter()
        return ro, step_info(
            texts=texts, rows=rep_rows, rewards=scored.rewards, components=scored.components,
            stats=scored.stats, prompts_truncated=n_trunc, n_tokens=int(cmask.sum()),
            truncated=float(np.mean(trunc)),
            times={"time/sample": t1 - t0, "time/reward": t2 - t1, "time/embed": t3 - t2})

    def collect_filled(self, state: TrainState, rows: List[dict],
                       more_rows: Callable[[int], List[dict]]) -> Tuple[Rollout, Dict[str, Any]]:
        """Dynamic sampling (DAPO, arXiv 2503.14476; verl ``algorithm.filter_groups``): groups
        whose rewards have zero spread give no gradient, so they are dropped and
        ``more_rows(P)`` prompts are sampled again (round r uses ``fold_in(key, r)``) until P
        groups with spread are collected or ``train.max_sampling_rounds`` rounds are used;
        unfilled slots then take zero-spread groups (advantage 0) and are counted. The info
        (texts, rewards, components, times) covers every sampled completion."""
        p = len(rows)
        kept, spare, infos = [], [], []
        for r in range(self.c.train.max_sampling_rounds):
            ro, info = self.collect(state, rows if r == 0 else more_rows(p), round_=r)
            spread = group_has_spread(ro)
            if r == 0:
                zero_first = float(np.mean(~spread))
            kept.append(take_groups(ro, np.flatnonzero(spread)))
            spare.append(take_groups(ro, np.flatnonzero(~spread)))
            infos.append(info)
            if sum(k.num_prompts for k in kept) >= p:
                break
        n_kept = sum(k.num_prompts for k in kept)
        if n_kept == 0 and int(state.step) == 0:
            raise ConfigError(
                f"config.train.dynamic_sampling=True: no group had reward spread in "
                f"{len(infos)} rounds (config.train.max_sampling_rounds) of the first step, so no "
                "batch can be filled: check the reward (every completion scored alike?) or turn "
                "dynamic sampling off")
        ro = concat_groups([k for k in kept if k.num_prompts] + [s for s in spare
                                                                 if s.num_prompts])
        ro = take_groups(ro, np.arange(p))
        return ro, merge_infos(infos, {"dynamic/frac_reward_zero_std": zero_first,
                                       "dynamic/rounds": float(len(infos)),
                                       "dynamic/unfilled": float(max(p - n_kept, 0))})

    def update(self, state: TrainState, rollout: Rollout):
        """Stages advantages -> loss -> optax: the jitted pure update (state donated), on the
        rollout trimmed to the bucketed longest completion (``train.completion_buckets``)."""
        buckets = self.c.train.completion_buckets
        if buckets > 1:
            longest = int(np.max(shd.to_host(jnp.sum(rollout.completion_mask, axis=-1))))
            rollout = trim_completions(rollout, completion_width(
                longest, rollout.completion_tokens.shape[-1], buckets))
        return self._update_jit(state, rollout, self.ref_params, self.frozen)

    def advantages(self, rollout: Rollout):
        """The configured chain alone on ``rollout``, jitted: ``(adv [P, G], diag)`` (what the
        update computes inside; run by the host path only with ``time_advantages``)."""
        if self._advantages_jit is None:
            self._advantages_jit = _jit_checked(advantage_fn_from_config(self.c), self._check)
        return self._advantages_jit(rollout)

    # -- the fused path ----------------------------------------------------------------------

    def _fusable(self) -> bool:
        """Whether every extra the chain reads can be computed inside the jit (a sentence
        encoder reads decoded text)."""
        return "embeddings" not in self.needs or self.c.embedding.model == "policy"

    def _make_fused_jit(self) -> Callable:
        """The jitted fused step ``(state, prompts, pmask, targets, anchor_in, qmask,
        ref_params, frozen) -> (state, rollout, metrics)``: sample -> token reward -> embed ->
        assemble -> update, the state donated."""
        c, needs, anchors, trigger = self.c, self.needs, self.anchors, self.c.anchors.trigger
        token_reward, embed, rest = self.env.token_reward, self._policy_embed, self.rest
        sampler, update = self.sampler, self._update_fn

        def step(state, prompts, pmask, targets, anchor_in, qmask, ref_params, frozen):
            params = policy_params(c, state.params, frozen)
            out = sampler(nnx.merge_state(params, rest), prompts, pmask,
                          sample_key(state))                                          # sample
            rewards, correct = token_reward(out.completion_tokens, out.completion_mask,
                                            targets)                                  # reward
            fine = (sequence_probability(out.logprobs, out.completion_mask)
                    if "fine_scores" in needs else None)
            emb = (embed(params, out.completion_tokens, out.completion_mask)
                   if "embeddings" in needs else None)                                # embed
            anc = None
            if anchors:
                atoks, amask, atargets = anchor_in
                a_reward, _ = token_reward(atoks, amask, atargets)
                anc = Anchors(tokens=atoks, mask=amask, rewards=a_reward,
                              fine_scores=jnp.ones_like(a_reward),
                              embeddings=embed(params, atoks, amask) if "embeddings" in needs
                              else None)
            ro = assemble(out, rewards, correct, fine_scores=fine, embeddings=emb,
                          question_mask=qmask, anchors=anc, trigger=trigger)          # assemble
            state, metrics = update(state, ro, ref_params, frozen)                    # update
            return state, (ro, metrics)

        if self._check:
            run = _jit_checked(step, True, donate=(0,))
        else:
            run = executables.wrap(StateShardedJit(lambda mesh: step, self.mesh,
                                                   replicate_aux=False), donates_state=True)

        def jitted(*args):
            state, (ro, metrics) = run(*args)
            return state, ro, metrics

        return jitted

    def _fused_run(self, state: TrainState, rows: List[dict]):
        """``(state, rollout, metrics, prompts truncated)``: encode and the anchors' tokens on
        the host (they depend on the rows only), then the fused jit."""
        token_reward = self.env.token_reward
        prompts, pmask, n_trunc = self.encode(rows)                                   # encode
        rep_rows = [r for r in rows for _ in range(self.group)]
        targets = jax.tree.map(jnp.asarray, token_reward.targets(rep_rows))
        anchor_in = None
        if self.anchors:
            _, atoks, amask = self._anchor_tokens(rows)
            anchor_in = (jnp.asarray(atoks), jnp.asarray(amask),
                         jax.tree.map(jnp.asarray, token_reward.targets(rows)))
        qmask = self.question_mask(rows, prompts.shape[1])
        state, ro, metrics = self._fused_jit(state, self.put_batch(prompts),
                                             self.put_batch(pmask), targets, anchor_in, qmask,
                                             self.ref_params, self.frozen)
        return state, ro, metrics, n_trunc

    def _fused_info(self, ro: Rollout, rows: List[dict], prompts_truncated: int
                    ) -> Dict[str, Any]:
        """The host-side info of a fused step (texts are decoded for the samples log)."""
        g = self.group
        # to_host: gathers the other hosts' rows of the batch-sharded rollout on several hosts.
        ctoks, cmask, rewards = shd.to_host((ro.completion_tokens, ro.completion_mask,
                                             ro.rewards))
        ctoks = ctoks[:, :g].reshape(-1, ctoks.shape[-1])
        cmask = cmask[:, :g].reshape(ctoks.shape)
        rewards = rewards[:, :g].reshape(-1)
        w = self.env.token_reward.weight
        # Truncated: the last slot holds a token that is not an EOS (no EOS within Tc).
        truncated = cmask[:, -1] & ~np.isin(ctoks[:, -1], self.eos_ids)
        return step_info(texts=decode_completions(self.tokenizer, ctoks, cmask),
                         rows=[r for r in rows for _ in range(g)], rewards=rewards,
                         components={"digits": rewards / w if w else rewards}, stats={},
                         prompts_truncated=prompts_truncated, n_tokens=int(cmask.sum()),
                         truncated=float(np.mean(truncated)), times={})

    # -- the whole step ----------------------------------------------------------------------

    def _host_step(self, state: TrainState, rows: List[dict], more_rows):
        """``(state, device metrics, info)`` of the host path, stage times in ``info``."""
        if self.c.train.dynamic_sampling:
            if more_rows is None:
                raise ValueError("train.dynamic_sampling needs more_rows(n) (the data source)")
            ro, info = self.collect_filled(state, rows, more_rows)
        else:
            ro, info = self.collect(state, rows)                      # encode .. assemble
        t1 = time.perf_counter()
        if self.time_advantages:
            jax.block_until_ready(self.advantages(ro))                 # timed for the log
            t_adv = time.perf_counter()
            info["times"]["time/advantages"] = t_adv - t1
            t1 = t_adv
        state, metrics = self.update(state, ro)                        # advantages .. optax
        metrics = jax.device_get(metrics)
        info["times"]["time/update"] = time.perf_counter() - t1
        return state, metrics, info

    def __call__(self, state: TrainState, rows: List[dict],
                 more_rows: Optional[Callable[[int], List[dict]]] = None):
        """One training step on P rows: ``(new state, metrics {name: float}, info)``.
        ``more_rows(n)``: the next n prompt rows (dynamic sampling draws them when groups are
        dropped; required with ``train.dynamic_sampling``).

        The host path reports per-stage times (``time/sample``, ``time/reward``, ``time/embed``
        — embed includes assembly and anchors —, ``time/update``: the jitted update, which
        computes the advantages inside, and with ``time_advantages`` ``time/advantages``: a
        separately jitted call of the same chain on the same rollout, timed for the log only);
        the fused path only ``time/step``. The metrics come back to the host in one
        transfer."""
        t0 = time.perf_counter()
        if self.c.train.fused:
            state, ro, metrics, n_trunc = self._fused_run(state, rows)
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - t0
            info = self._fused_info(ro, rows, n_trunc)
        else:
            state, metrics, info = self._host_step(state, rows, more_rows)
            elapsed = time.perf_counter() - t0
        return state, step_metrics(metrics, info, elapsed), info


def make_step(c: mc.ConfigDict, *, graphdef, rest, tx, tokenizer, eos_ids, pad_id: int,
              env: Env, mesh=None, ref_params=None, frozen=None,
              time_advantages: bool = False) -> Step:
    """The training step of config ``c`` (see the module docstring).

    Args:
      graphdef, rest: the policy split by ``jaxgrpo.train.split_model`` (params live in the
        ``TrainState``); tx: the optax optimiser of the state.
      tokenizer, eos_ids, pad_id: ``jaxgrpo.models.load_policy`` / ``eos_ids`` / ``pad_id``.
      env: ``jaxgrpo.env.build_env`` (rows, the reward; ``env.token_reward`` for fused steps).
      mesh: the device mesh the prompts are laid out on (None: default device).
      ref_params: the frozen reference policy's params (``loss.beta > 0``), else None.
      frozen: with LoRA (``config.lora.rank > 0``) the base parameters the adapters in
        ``state.params`` are merged into (also the reference policy), else None.
      time_advantages: the host path also times the advantage chain alone
        (``time/advantages``; one more jitted call per step). Default off.

    Raises:
      ConfigError: ``train.fused=True`` with a reward that is not computable from tokens or an
        embedding that needs text; an extra the chain reads that the config cannot provide.
    """
    step = Step(c, graphdef=graphdef, rest=rest, tx=tx, tokenizer=tokenizer, eos_ids=eos_ids,
                pad_id=pad_id, env=env, mesh=mesh, ref_params=ref_params, frozen=frozen,
                time_advantages=time_advantages)
    if c.train.fused and step.fused is None:
        if env.token_reward is None:
            raise ConfigError("config.train.fused=True needs a reward computable from token ids: "
                              "set config.rewards.verifier='digits' (or train.fused=False)")
        raise ConfigError("config.train.fused=True: the chain reads embeddings and "
                          f"config.embedding.model={c.embedding.model!r} embeds decoded text; "
                          "set embedding.model='policy' (or train.fused=False)")
    return step
