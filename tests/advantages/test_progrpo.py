"""Tests for jaxgrpo.advantages.progrpo (ProGRPO confidences and ARM re-weighting) against
independent NumPy float64 references."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.advantages import (answer_confidence, arm_reweight, get_transform, grpo,
                                prompt_confidence)
from tests.advantages._helpers import make_rollout, np_answer_conf, np_arm, np_grpo, np_prompt_conf


# ---------------------------------------------------------------- ProGRPO / ARM


def test_progrpo_low_fraction_count_exact():
    n = jnp.asarray([0, 1, 4, 5, 6, 10, 15, 16, 100, 3584])
    from jaxgrpo.advantages.progrpo import low_fraction_count
    k = np.asarray(low_fraction_count(n, 0.2))
    np.testing.assert_array_equal(k, [1, 1, 1, 1, 2, 2, 3, 4, 20, 717])


@pytest.mark.parametrize("reading", ["low_fraction", "low_fraction_norm", "mean"])
def test_progrpo_answer_confidence(variant, reading):
    ro = make_rollout(np.zeros((3, 4)), tc=12, empty=(1, 2))
    fn = variant(functools.partial(answer_confidence, reading=reading, rho=0.2))
    out = fn(ro.logprobs, ro.completion_mask)
    np.testing.assert_allclose(out, np_answer_conf(ro.logprobs, ro.completion_mask, reading),
                               rtol=1e-5)
    assert float(out[1, 2]) == 1.0  # empty completion: defined value


@pytest.mark.parametrize("reading", ["mean", "low_fraction"])
def test_progrpo_prompt_confidence(reading):
    ro = make_rollout(np.zeros((4, 3)), tp=9, seed=3)
    out = prompt_confidence(ro.prompt_logprobs, ro.prompt_mask, reading=reading)
    np.testing.assert_allclose(out, np_prompt_conf(np.asarray(ro.prompt_logprobs),
                                                   np.asarray(ro.prompt_mask), reading),
                               rtol=1e-5)


@pytest.mark.parametrize("gate", [False, True])
def test_progrpo_transform_matches_numpy(gate):
    correct = np.asarray([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct, tc=10)
    base = grpo(ro.rewards)
    fn = jax.jit(functools.partial(get_transform("progrpo"), alpha=0.7,
                                        gate_all_correct=gate))
    out, diag = fn(ro, base)
    ca = np_answer_conf(ro.logprobs, ro.completion_mask)
    cq = np_prompt_conf(np.asarray(ro.prompt_logprobs), np.asarray(ro.prompt_mask))
    ref = np_arm(np_grpo(ro.rewards), correct, ca, cq, alpha=0.7, gate_all_correct=gate)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out)[0] == 0.0)  # all-wrong group unchanged (0)
    assert (np.abs(np.asarray(out)[2]).max() > 0) != gate  # all-correct group gets a signal
    for v in diag.values():
        assert v.shape == () and np.isfinite(v)


def test_progrpo_group_mean_answer_reading_is_zero_mean():
    correct = np.asarray([[1, 0, 1, 0], [1, 1, 1, 1]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct, tc=10)
    base = grpo(ro.rewards)
    out, _ = jax.jit(functools.partial(get_transform("progrpo"),
                                       prompt_confidence_reading="group_mean_answer"))(ro, base)
    np.testing.assert_allclose(np.asarray(out - base).sum(1), 0.0, atol=1e-6)


def test_progrpo_stop_gradient():
    correct = np.asarray([[1, 0, 1]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct)

    def f(lp, plp):
        out, _ = get_transform("progrpo")(ro.replace(logprobs=lp, prompt_logprobs=plp),
                                           grpo(ro.rewards))
        return jnp.sum(out**2)

    g1, g2 = jax.jit(jax.grad(f, argnums=(0, 1)))(ro.logprobs, ro.prompt_logprobs)
    assert np.all(np.asarray(g1) == 0.0) and np.all(np.asarray(g2) == 0.0)


def test_progrpo_empty_completion_and_anchor_not_corrected():
    correct = np.asarray([[1, 0, 1, 1]], bool)
    ro = make_rollout(correct.astype(np.float32), correct=correct, empty=(0, 1))
    ro = ro.replace(is_anchor=jnp.asarray([[False, False, False, True]]))
    base = grpo(ro.rewards)
    out, _ = jax.jit(get_transform("progrpo"))(ro, base)
    d = np.asarray(out - base)
    assert d[0, 1] == 0.0 and d[0, 3] == 0.0 and d[0, 0] != 0.0
    out2, _ = jax.jit(functools.partial(get_transform("progrpo"), apply_to_anchors=True))(
        ro, base)
    assert np.asarray(out2 - base)[0, 3] != 0.0


def test_progrpo_arm_reweight_direct():
    # One-token answers with probabilities c(o|q) and two-token prompts whose one predicted
    # token has probability c(q) = 0.5, so both confidences are exact inputs.
    a = jnp.zeros((2, 2))
    correct = jnp.asarray([[True, True], [False, False]])
    ca = jnp.asarray([[0.9, 0.3], [0.5, 0.5]])
    plp = jnp.log(jnp.asarray([[1.0, 0.5], [1.0, 0.5]]))
    out = arm_reweight(a, correct.astype(jnp.float32), correct, jnp.log(ca)[..., None],
                       jnp.ones((2, 2, 1), bool), plp, jnp.ones((2, 2), bool),
                       answer_confidence_reading="mean")
    np.testing.assert_allclose(out, [[-0.4, 0.2], [0.0, 0.0]], atol=1e-6)


def np_arm_gate(a, rewards, correct, ca, cq, alpha=1.0, gate="reward_sum"):
    """METHODS §4: no correction where sum_k r_k = 0 (gate "reward_sum") or, as an option,
    where no correctness flag is set (gate "correct")."""
    out = np.array(a, np.float64)
    for p in range(out.shape[0]):
        off = (np.sum(rewards[p]) == 0) if gate == "reward_sum" else (not np.any(correct[p]))
        if not off:
            out[p] = out[p] + alpha * (cq[p] - ca[p])
    return out


@pytest.mark.parametrize("gate", ["reward_sum", "correct"])
def test_progrpo_gate(gate):
    # Group 0: no correct answer but a format reward (sum r > 0); group 1: rewards all 0 but a
    # correctness flag set (e.g. accuracy weight 0); group 2: both zero; group 3: both set.
    rewards = np.asarray([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.5]],
                         np.float32)
    correct = np.asarray([[0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]], bool)
    ro = make_rollout(rewards, correct=correct, tc=9, seed=22)
    base = grpo(ro.rewards)
    out, _ = jax.jit(functools.partial(get_transform("progrpo"), gate=gate))(ro, base)
    ca = np_answer_conf(ro.logprobs, ro.completion_mask)
    cq = np_prompt_conf(np.asarray(ro.prompt_logprobs), np.asarray(ro.prompt_mask))
    want = np_arm_gate(np_grpo(rewards), rewards, correct, ca, cq, gate=gate)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    d = np.abs(np.asarray(out - base)).max(1)
    assert (d[0] > 0) == (gate == "reward_sum") and (d[1] > 0) == (gate == "correct")
    assert d[2] == 0 and d[3] > 0


def test_progrpo_question_tokens_only():
    ro = make_rollout(np.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), tp=8, seed=23)
    pm = np.asarray(ro.prompt_mask)
    qm = pm.copy()
    qm[:, -2:] = False  # the last two prompt tokens: the template's generation prompt
    qm[0, np.nonzero(pm[0])[0][:2]] = False  # and a system prefix on prompt 0
    ro = ro.replace(question_mask=jnp.asarray(qm))
    base = grpo(ro.rewards)
    out, diag = jax.jit(functools.partial(get_transform("progrpo"), prompt_tokens="question"))(
        ro, base)
    plp = np.asarray(ro.prompt_logprobs, np.float64)
    cq = np.ones(2)
    for p in range(2):
        pred = np.nonzero(pm[p])[0][1:]  # tokens with a prediction
        v = plp[p][[t for t in pred if qm[p, t]]]
        cq[p] = math.exp(v.mean()) if v.size else 1.0
    ca = np_answer_conf(ro.logprobs, ro.completion_mask)
    np.testing.assert_allclose(out, np_arm(np_grpo(ro.rewards), np.asarray(ro.correct), ca, cq),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diag["prompt_confidence_mean"], cq.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="question_mask"):
        get_transform("progrpo")(ro.replace(question_mask=None), base, prompt_tokens="question")
