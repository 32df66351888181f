"""The training step (jaxgrpo/step.py): what each transform needs, the host path for every
option that changes it, the fused one-jit path against the host path, log.every and
nonfinite='check'."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.advantages import required_inputs
from jaxgrpo.errors import ConfigError

# ------------------------------------------------------------------------------ needs


@pytest.mark.parametrize("chain,want", [
    (("grpo", (), (), {}), set()),
    (("dr_grpo", (), (), {}), set()),
    (("grpo", ("dra",), (), {}), {"embeddings"}),
    (("dagrpo", (), (), {}), {"fine_scores"}),  # defaults: score="fine", distinctiveness="score"
    (("dagrpo", (), (), {"dagrpo": {"score": "reward"}}), set()),
    (("dagrpo", (), (), {"dagrpo": {"distinctiveness": "embedding"}}),
     {"embeddings", "fine_scores"}),
    (("dagrpo", (), (), {"dagrpo": {"distinctiveness": "embedding", "score": "reward"}}),
     {"embeddings"}),
    (("grpo", (), ("progrpo",), {}), {"prompt_logprobs"}),
    (("grpo", (), ("progrpo",), {"progrpo": {"prompt_confidence_reading": "low_fraction"}}),
     {"prompt_logprobs"}),
    (("grpo", (), ("progrpo",), {"progrpo": {"prompt_confidence_reading": "group_mean_answer"}}),
     set()),
    (("dr_grpo", ("dra",), ("progrpo",), {}), {"embeddings", "prompt_logprobs"}),
    (("grpo", (), ("progrpo",), {"progrpo": {"prompt_tokens": "question"}}),
     {"prompt_logprobs", "question_mask"}),
])
def test_required_inputs_follow_the_options(chain, want):
    assert required_inputs(*chain) == frozenset(want)


def test_required_inputs_reject_an_unknown_transform():
    with pytest.raises(ValueError, match="unknown advantage transform 'ppo'"):
        required_inputs("ppo")


# ------------------------------------------------------------------------------ host path


def _trainer(tiny_llama_dir, tiny_run_config, tmp_path, **over):
    from jaxgrpo.loop import Trainer
    return Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "run", **over))


# Every registered transform, with every option value that changes what it reads.
HOST_CHAINS = [
    {"advantage.baseline": "grpo"},
    {"advantage.baseline": "dr_grpo"},
    {"advantage.reward_transforms": "dra", "embedding.model": "policy"},
    {"advantage.baseline": "dagrpo"},
    {"advantage.baseline": "dagrpo", "advantage.options.dagrpo.score": "reward"},
    # The bug this guards: embedding distinctiveness used to get no embeddings.
    {"advantage.baseline": "dagrpo", "advantage.options.dagrpo.distinctiveness": "embedding"},
    {"advantage.baseline": "dagrpo", "advantage.options.dagrpo.distinctiveness": "embedding",
     "advantage.options.dagrpo.score": "reward", "embedding.model": "policy"},
    {"advantage.advantage_transforms": "progrpo"},
    {"advantage.advantage_transforms": "progrpo",
     "advantage.options.progrpo.prompt_confidence_reading": "group_mean_answer"},
    {"advantage.advantage_transforms": "progrpo",
     "advantage.options.progrpo.prompt_tokens": "question"},
    {"advantage.baseline": "rloo"},
]


@pytest.mark.parametrize("chain", HOST_CHAINS, ids=lambda d: ",".join(
    f"{k.split('.')[-1]}={v}" for k, v in d.items()))
def test_one_host_step_of_every_transform_and_option(tiny_llama_dir, tiny_run_config, tmp_path,
                                                      chain):
    """The step computes exactly the extras the chain reads, and one step runs."""
    from jaxgrpo.step import rollout_needs

    t = _trainer(tiny_llama_dir, tiny_run_config, tmp_path, **chain)
    try:
        need = rollout_needs(t.c)
        rows = t.train_iter.next_batch(t.c.train.prompts_per_step)
        ro, _ = t.step.collect(t.state, rows)
        p, g = 2, 4
        assert (ro.embeddings is not None) == ("embeddings" in need)
        assert (ro.fine_scores is not None) == ("fine_scores" in need)
        assert (ro.question_mask is not None) == ("question_mask" in need)
        if ro.embeddings is not None:
            assert ro.embeddings.shape[:2] == (p, g)
            np.testing.assert_allclose(np.linalg.norm(np.asarray(ro.embeddings), axis=-1), 1.0,
                                       rtol=1e-5)
        # The prefill's prompt log-probs are computed only when read (zeros otherwise).
        has_plp = bool(np.any(np.asarray(ro.prompt_logprobs) != 0))
        assert has_plp == ("prompt_logprobs" in need)
        t.step.time_advantages = True  # the opt-in timing of the chain alone
        state, m, _ = t.step(t.state, rows)
        assert all(np.isfinite(v) for v in m.values()), m
        for k in ("time/sample", "time/reward", "time/embed", "time/advantages", "time/update"):
            assert m[k] >= 0.0, k
        name = (chain.get("advantage.reward_transforms")
                or chain.get("advantage.advantage_transforms") or chain["advantage.baseline"])
        assert any(k.startswith(f"{name}/") for k in m), sorted(m)
    finally:
        t.close()


# ------------------------------------------------------------------------------ fused path

DIGITS = {"rewards.verifier": "digits", "rewards.cosine": 0.0,
          "rewards.digits_partial_credit": True,
          # Single-digit sums: short integer answers.
          "data.task_kwargs": json.dumps({"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                          "max_digits": 1, "operators": ["+"],
                                          "allow_negation": False,
                                          "allow_parentheses": False})}

SLOW = pytest.mark.slow
# The fast set keeps plain GRPO and the widest composition (DRA + ProGRPO, policy embeddings);
# each other chain is one more pair of compiles (~45 s on 2 cores), run with -m slow.
FUSED_CHAINS = [
    {"advantage.baseline": "grpo"},
    pytest.param({"advantage.baseline": "dr_grpo"}, marks=SLOW),
    pytest.param({"advantage.reward_transforms": "dra", "embedding.model": "policy"}, marks=SLOW),
    pytest.param({"advantage.baseline": "dagrpo"}, marks=SLOW),
    pytest.param({"advantage.baseline": "dagrpo", "advantage.options.dagrpo.distinctiveness": "embedding",
                  "embedding.model": "policy"}, marks=SLOW),
    pytest.param({"advantage.baseline": "dagrpo", "anchors.enabled": True, "anchors.trigger": "always"},
                 marks=SLOW),
    pytest.param({"advantage.baseline": "dr_grpo", "advantage.advantage_transforms": "progrpo"},
                 marks=SLOW),
    {"advantage.reward_transforms": "dra", "advantage.advantage_transforms": "progrpo",
     "embedding.model": "policy"},
]


def _frequent_token_reward(t, rows):
    """A digits reward whose "digit" tokens are the 11 ids the random policy samples most, so
    that its partial credit is not almost always 0 (a test device; the same function runs on
    both paths)."""
    ro, _ = t.step.collect(jax.tree.map(jnp.copy, t.state), rows)
    toks = np.asarray(ro.completion_tokens)[np.asarray(ro.completion_mask)]
    ids, counts = np.unique(toks[~np.isin(toks, t.eos_ids)], return_counts=True)
    top = ids[np.argsort(-counts, kind="stable")][:11]
    assert len(top) == 11, "the test run must sample at least 11 distinct tokens"
    return dataclasses.replace(t.env.token_reward,
                               char_to_id=dict(zip("0123456789-", map(int, top))))


def _chain_id(d):
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in d.items())


@pytest.mark.parametrize("chain", FUSED_CHAINS, ids=_chain_id)
def test_fused_step_gives_the_host_steps_metrics(tiny_llama_dir, tiny_run_config, tmp_path,
                                                  chain):
    """train.fused (sample -> token reward -> embed -> assemble -> update in ONE jit) equals the
    host path on the same state and rows: same samples (one key derivation), same rollout, same
    metrics and parameters."""
    from jaxgrpo.step import make_step

    t = _trainer(tiny_llama_dir, tiny_run_config, tmp_path, **DIGITS, **chain)
    try:
        rows = t.train_iter.next_batch(t.c.train.prompts_per_step)
        t.env.token_reward = _frequent_token_reward(t, rows)
        step = make_step(t.c, graphdef=t.graphdef, rest=t.rest, tx=t.tx, tokenizer=t.tokenizer,
                         eos_ids=t.eos_ids, pad_id=t.pad_id, env=t.env, mesh=t.mesh)
        assert step.fused is not None
        s_host, s_fused = jax.tree.map(jnp.copy, t.state), jax.tree.map(jnp.copy, t.state)
        ro_host, _ = step.collect(s_host, rows)
        s_host, m_host = step.update(s_host, ro_host)
        s_fused, ro_fused, m_fused = step.fused(s_fused, rows)

        np.testing.assert_array_equal(ro_fused.completion_tokens, ro_host.completion_tokens)
        np.testing.assert_array_equal(ro_fused.member_mask, ro_host.member_mask)
        np.testing.assert_allclose(ro_fused.rewards, ro_host.rewards, atol=1e-6)
        for field in ("fine_scores", "embeddings"):
            a, b = getattr(ro_fused, field), getattr(ro_host, field)
            assert (a is None) == (b is None), field
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=field)
        m_host, m_fused = jax.device_get(m_host), jax.device_get(m_fused)
        assert sorted(m_host) == sorted(m_fused)
        for k in m_host:
            np.testing.assert_allclose(m_fused[k], m_host[k], rtol=1e-4, atol=1e-6, err_msg=k)
        for x, y in zip(jax.tree.leaves(jax.device_get(s_fused.params)),
                        jax.tree.leaves(jax.device_get(s_host.params))):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
        assert int(s_fused.step) == int(s_host.step) == 1
    finally:
        t.close()


@pytest.mark.slow
def test_fused_run_trains_and_resumes_like_the_host_run(tiny_llama_dir, tiny_run_config,
                                                        tmp_path):
    """config.train.fused=True through Trainer.train(): the same logged losses and rewards as
    train.fused=False on the same seed."""
    from jaxgrpo.loop import Trainer

    logs = {}
    for fused in (False, True):
        run = tmp_path / f"fused{fused}"
        t = Trainer(tiny_run_config(tiny_llama_dir, run, steps=2, **DIGITS,
                                    **{"train.fused": fused}))
        t.train()
        t.close()
        with open(run / "metrics.jsonl") as f:
            logs[fused] = [json.loads(x) for x in f if '"train"' in x]
    assert [r["step"] for r in logs[True]] == [r["step"] for r in logs[False]] == [1, 2]
    for a, b in zip(logs[True], logs[False]):
        for k in ("loss", "reward/mean", "accuracy", "grad_norm", "completion_length",
                  "reward/digits"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
        assert "time/sample" in b and "time/sample" not in a  # fused: one jit, time/step only


def test_fused_needs_a_token_reward(tiny_llama_dir, tiny_run_config, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.fused.*rewards\.verifier='digits'"):
        _trainer(tiny_llama_dir, tiny_run_config, tmp_path, **{"train.fused": True})


def test_fused_refuses_a_text_encoder(tiny_llama_dir, tiny_run_config, tmp_path):
    with pytest.raises(ConfigError, match=r"embedding\.model='policy'"):
        _trainer(tiny_llama_dir, tiny_run_config, tmp_path, **DIGITS,
                 **{"train.fused": True, "advantage.reward_transforms": "dra"})


def test_digits_verifier_refuses_text_rewards(tiny_llama_dir, tiny_run_config, tmp_path):
    with pytest.raises(ConfigError, match=r"rewards\.cosine"):
        _trainer(tiny_llama_dir, tiny_run_config, tmp_path,
                 **{**DIGITS, "rewards.cosine": 1.0})


def test_fine_scores_needed_but_disabled_is_a_config_error(tiny_llama_dir, tiny_run_config,
                                                           tmp_path):
    with pytest.raises(ConfigError, match=r"rewards\.fine_score='none'"):
        _trainer(tiny_llama_dir, tiny_run_config, tmp_path,
                 **{"advantage.baseline": "dagrpo", "rewards.fine_score": "none"})


# ------------------------------------------------------------------------------ log.every


def test_log_every_writes_the_mean_of_each_window(tiny_llama_dir, tiny_run_config, tmp_path):
    """log.every=2 over 5 steps: records at steps 2, 4 and the partial window 5, each the mean
    of its steps' metrics (Trainer.history keeps every step)."""
    from jaxgrpo.loop import Trainer

    t = Trainer(tiny_run_config(tiny_llama_dir, tmp_path / "run", steps=5,
                                **{"log.every": 2}))
    t.train()
    t.close()
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        recs = [json.loads(x) for x in f]
    train = {r["step"]: r for r in recs if r["kind"] == "train"}
    assert sorted(train) == [2, 4, 5]
    hist = {h["step"]: h for h in t.history}
    assert sorted(hist) == [1, 2, 3, 4, 5]
    for end, steps in ((2, (1, 2)), (4, (3, 4)), (5, (5,))):
        assert train[end]["log_window"] == len(steps)
        for k in ("loss", "reward/mean", "grad_norm", "time/step"):
            np.testing.assert_allclose(train[end][k], np.mean([hist[s][k] for s in steps]),
                                       rtol=1e-6, err_msg=f"{end} {k}")
    assert sum(r["kind"] == "eval" for r in recs) == 2  # before and after


# ------------------------------------------------------------------------------ nonfinite


def test_nonfinite_check_raises_in_the_step(tiny_llama_dir, tiny_run_config, tmp_path):
    """advantage.options.grpo.nonfinite='check': a NaN reward fails the jitted update with the
    checkify message; finite rewards pass."""
    from jax.experimental import checkify

    t = _trainer(tiny_llama_dir, tiny_run_config, tmp_path,
                 **{"advantage.options.grpo.nonfinite": "check"})
    try:
        rows = t.train_iter.next_batch(t.c.train.prompts_per_step)
        ro, _ = t.step.collect(t.state, rows)
        state, m = t.step.update(jax.tree.map(jnp.copy, t.state), ro)  # finite: passes
        assert np.isfinite(float(m["loss"]))
        bad = ro.replace(rewards=ro.rewards.at[0, 1].set(jnp.nan))
        with pytest.raises(checkify.JaxRuntimeError, match="non-finite reward"):
            t.step.update(jax.tree.map(jnp.copy, t.state), bad)
    finally:
        t.close()


# ------------------------------------------------------------------------------ dynamic sampling


def _synthetic_rollout(rewards, tp, tag):
    """A [P, G] rollout whose completion tokens carry ``tag`` (to trace groups) and whose
    prompts are ``tp`` wide."""
    from jaxgrpo.rollout import Rollout
    r = np.asarray(rewards, np.float32)
    p, g = r.shape
    return Rollout(
        prompt_tokens=jnp.full((p, tp), 7, jnp.int32), prompt_mask=jnp.ones((p, tp), bool),
        completion_tokens=jnp.asarray(tag + np.arange(p)[:, None, None] * np.ones((p, g, 3)),
                                      jnp.int32),
        completion_mask=jnp.ones((p, g, 3), bool), logprobs=jnp.zeros((p, g, 3)),
        prompt_logprobs=jnp.ones((p, tp)), rewards=jnp.asarray(r),
        correct=jnp.asarray(r > 0), member_mask=jnp.ones((p, g), bool),
        is_anchor=jnp.zeros((p, g), bool))


def test_group_selection_helpers_against_numpy():
    from jaxgrpo.rollout import concat_groups, group_has_spread, take_groups
    a = _synthetic_rollout([[0, 0, 0], [0, 1, 0]], 4, 100)
    b = _synthetic_rollout([[1, 1, 1], [2, 0, 1], [5, 5, 5]], 6, 200)
    np.testing.assert_array_equal(group_has_spread(a), [False, True])
    np.testing.assert_array_equal(group_has_spread(b), [False, True, False])
    # an anchor does not give a group spread
    an = a.replace(is_anchor=jnp.asarray([[False, False, True], [False, False, False]]),
                   rewards=a.rewards.at[0, 2].set(1.0))
    np.testing.assert_array_equal(group_has_spread(an), [False, True])
    cat = concat_groups([take_groups(a, [1]), take_groups(b, [1, 0])])
    assert cat.prompt_tokens.shape == (3, 6) and cat.rewards.shape == (3, 3)
    # left padding: the narrower batch's prompt gets 2 masked slots in front
    np.testing.assert_array_equal(np.asarray(cat.prompt_mask[0]), [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(np.asarray(cat.prompt_logprobs[0]), [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(np.asarray(cat.completion_tokens[:, 0, 0]), [101, 201, 200])
    np.testing.assert_array_equal(np.asarray(cat.rewards), [[0, 1, 0], [2, 0, 1], [1, 1, 1]])


def test_dynamic_sampling_fills_the_batch_with_groups_that_have_spread(tiny_llama_dir,
                                                                        tiny_run_config,
                                                                        tmp_path):
    """Rounds are sampled until P groups with spread are kept (each round its own key and new
    rows), the rest is filled with zero-spread groups and counted."""
    t = _trainer(tiny_llama_dir, tiny_run_config, tmp_path,
                 **{"train.dynamic_sampling": True, "train.max_sampling_rounds": 3,
                    "train.prompts_per_step": 2})
    try:
        plans = {0: [[0, 0, 0, 0], [1, 0, 1, 0]],   # round 0: one group with spread
                 1: [[1, 1, 1, 1], [0, 0, 0, 0]],   # round 1: none
                 2: [[0, 1, 1, 1], [0, 0, 1, 0]]}   # round 2: two (one is more than needed)
        calls, drawn = [], []

        def fake_collect(state, rows, round_=0):
            calls.append((round_, [r["question"] for r in rows]))
            ro = _synthetic_rollout(plans[round_], 5 + round_, 100 * (round_ + 1))
            info = dict(texts=["x"] * 8, rows=list(rows) * 4, rewards=np.zeros(8),
                        components={"accuracy": np.zeros(8)}, stats={}, prompts_truncated=0,
                        n_tokens=24, truncated=0.0, times={"time/sample": 1.0})
            return ro, info

        def more_rows(n):
            rows = t.train_iter.next_batch(n)
            drawn.append([r["question"] for r in rows])
            return rows

        t.step.collect = fake_collect
        rows = t.train_iter.next_batch(2)
        ro, info = t.step.collect_filled(t.state, rows, more_rows)
        assert [c[0] for c in calls] == [0, 1, 2]
        assert calls[1][1] == drawn[0] and calls[2][1] == drawn[1] != calls[0][1]
        # kept: round 0 group 1, then round 2 group 0 (the batch is full)
        np.testing.assert_array_equal(np.asarray(ro.completion_tokens[:, 0, 0]), [101, 300])
        assert ro.prompt_tokens.shape == (2, 7)
        assert info["dynamic"] == {"dynamic/frac_reward_zero_std": 0.5, "dynamic/rounds": 3.0,
                                   "dynamic/unfilled": 0.0}
        assert info["times"]["time/sample"] == 3.0 and len(info["texts"]) == 24
        # with one round allowed the second slot is a zero-spread group, counted
        t.step.c.unlock()  # the step's config (the Trainer's, with train.grad_accum chosen)
        t.step.c.train.max_sampling_rounds = 1
        calls.clear()
        ro, info = t.step.collect_filled(t.state, rows, more_rows)
        np.testing.assert_array_equal(np.asarray(ro.completion_tokens[:, 0, 0]), [101, 100])
        assert info["dynamic"]["dynamic/unfilled"] == 1.0
    finally:
        t.close()


def test_dynamic_sampling_that_can_never_fill_names_the_keys(tiny_llama_dir, tiny_run_config,
                                                             tmp_path):
    # accuracy only, a random tiny model: every reward is 0, no group ever has spread
    t = _trainer(tiny_llama_dir, tiny_run_config, tmp_path,
                 **{"train.dynamic_sampling": True, "train.max_sampling_rounds": 2,
                    "rewards.cosine": 0.0})
    try:
        with pytest.raises(ConfigError, match="train.max_sampling_rounds"):
            t.train_step(0)
    finally:
        t.close()
    with pytest.raises(ValueError, match="dynamic_sampling"):
        from jaxgrpo.experiment import validate
        validate(tiny_run_config(tiny_llama_dir, tmp_path / "r2", **{
            "train.dynamic_sampling": True, "train.fused": True}))


@pytest.mark.parametrize("warm", ["0", "1"])
def test_no_compilation_after_the_first_step(tiny_llama_dir, tiny_run_config, tmp_path,
                                             monkeypatch, warm):
    """The Trainer's step compiles its sampler and update once: steps 2 and 3 compile nothing
    (the initial state is laid out as the update returns it, rng and step included). With warm
    host memory (jaxgrpo.cpu.warm_memory, the executable hook an entry point installs) reading
    each function's need compiles nothing more, and the reserve is filled at step 2 and lent
    from step 3 on."""
    import logging

    from jaxgrpo import executables
    from jaxgrpo.cpu import warm_memory

    monkeypatch.setenv(warm_memory.SWITCH, warm)
    monkeypatch.setattr(warm_memory, "PAYS_KERNEL_S_PER_GB", 0.0)  # lending pays here
    monkeypatch.setattr(warm_memory, "PAYS_MIN_KERNEL_S", 0.0)
    # As jaxgrpo.cpu.install() sets it (without tuning this test process).
    executables.set_wrapper(warm_memory.wrap, release=warm_memory.release)
    # One width: trimming to the longest completion compiles once per bucket seen (tested above).
    try:
        t = _trainer(tiny_llama_dir, tiny_run_config, tmp_path,
                     **{"train.completion_buckets": 1})
    except BaseException:
        executables.set_wrapper(None)
        raise
    assert isinstance(t.step.sampler, warm_memory.WarmCall) == (warm == "1")
    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling "):
                records.append(record.getMessage().split(" with ")[0])

    handler = Catch(logging.WARNING)
    logging.getLogger("jax").addHandler(handler)
    jax.config.update("jax_log_compiles", True)
    # The sampler is cached per config (sampling.make_sampler): an earlier test in this session
    # may have traced it already; start from empty in-memory caches so step 1 must compile.
    jax.clear_caches()
    try:
        t.train_step(0)
        assert sum("sampler" in r for r in records) == 1, records
        assert sum("update" in r for r in records) == 1, records
        records.clear()
        t.train_step(1)
        t.train_step(2)
        assert records == [], records
        if warm == "1":
            needs = [*t.step.sampler.needs.values(), *t.step._update_jit.needs.values()]
            assert len(needs) == 2 and min(needs) > 0
            assert warm_memory.reserve().held_bytes >= max(needs)
            lends = [*t.step.sampler.lends.values(), *t.step._update_jit.lends.values()]
            assert lends == [True, True]
    finally:
        jax.config.update("jax_log_compiles", False)
        logging.getLogger("jax").removeHandler(handler)
        t.close()  # gives the reserve back (executables.release)
        executables.set_wrapper(None)


# ------------------------------------------------------------------------------ padding columns

def test_completion_width_buckets():
    from jaxgrpo.rollout import completion_width
    # 48 new tokens, 4 buckets: widths 16, 24, 40, 48 (12k rounded up to multiples of 8)
    assert [completion_width(n, 48, 4) for n in (1, 16, 17, 24, 25, 40, 41, 48)] == \
        [16, 16, 24, 24, 40, 40, 48, 48]
    assert completion_width(3, 48, 1) == 48  # one bucket: never trimmed
    assert completion_width(3, 8, 4) == 8  # never wider than the limit


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_trimmed_update_equals_the_full_width_update(tiny_llama_dir, tiny_run_config, tmp_path,
                                                     agg):
    """The host step drops completion columns past the longest completion: the same loss,
    metrics and new parameters as the full-width update (the Dr.GRPO-style normaliser reads
    sampling.max_new_tokens, not the width), and only at one of the bucketed widths."""
    t = _trainer(tiny_llama_dir, tiny_run_config, tmp_path, **{
        "sampling.max_new_tokens": 32, "train.completion_buckets": 4, "loss.agg_mode": agg,
        "rewards.cosine": 0.0, "rewards.format": 0.0})
    try:
        rows = t.train_iter.next_batch(t.c.train.prompts_per_step)
        ro, _ = t.step.collect(t.state, rows)
        # Completions of 3..11 tokens (the random policy rarely stops): width 16 of 32.
        lengths = 3 + np.arange(ro.completion_mask.size // 32).reshape(ro.rewards.shape) % 9
        mask = np.arange(32)[None, None, :] < lengths[..., None]
        ro = ro.replace(completion_mask=jnp.asarray(mask),
                        rewards=jnp.asarray(lengths % 3, jnp.float32))
        widths = []
        inner = t.step._update_jit
        t.step._update_jit = lambda s, r, *a: (widths.append(r.completion_tokens.shape[-1]),
                                               inner(s, r, *a))[1]
        copy = lambda s: jax.tree.map(lambda a: jnp.array(a, copy=True), s)
        s_trim, m_trim = t.step.update(copy(t.state), ro)
        s_full, m_full = inner(copy(t.state), ro, t.step.ref_params, t.step.frozen)
        assert widths == [16]
        assert set(m_trim) == set(m_full)
        for k in m_full:
            if k.startswith("mismatch/"):
                continue  # below: differences of two log-probs, each exact to float32 rounding
            np.testing.assert_allclose(float(m_trim[k]), float(m_full[k]), rtol=1e-5, atol=1e-7,
                                       err_msg=k)
        for k in (k for k in m_full if k.startswith("mismatch/")):
            # |log pi_trainer - log pi_sampler| is ~1e-6 in float32; the two widths round the
            # trainer's log-probs apart by about one ulp of a log-prob (~1e-6), no more.
            assert abs(float(m_trim[k]) - float(m_full[k])) < 1e-5, k
        # Adam divides by sqrt(v): entries whose gradient is rounding noise move by up to +-lr
        # either way, so parameters agree to a small fraction of one step (lr = 1e-2) while
        # the loss and the gradient norm above agree to float32 rounding.
        lr = t.c.optim.lr
        for a, b, p0 in zip(jax.tree.leaves(s_trim.params), jax.tree.leaves(s_full.params),
                            jax.tree.leaves(t.state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=0.05 * lr)
            moved = np.abs(np.asarray(b) - np.asarray(p0))
            assert moved.max() > 0.5 * lr  # the step really moved them
        assert float(m_full["grad_norm"]) > 0
    finally:
        t.close()
