"""Tests for jaxgrpo.advantages.registry: composition by name, declared needs, the public face."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgrpo.advantages import (add_anchors, dagrpo, dr_grpo, dra_reweight, get_transform, grpo,
                                make_advantage_fn, required_inputs, rloo)
from tests.advantages._helpers import (make_rollout, np_answer_conf, np_arm, np_dagrpo, np_dra,
                                       np_grpo, np_prompt_conf)


# ---------------------------------------------------------------- registry / composition


def test_registry_dra_then_grpo_then_progrpo():
    correct = np.asarray([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    ro = make_rollout(correct.astype(np.float32) * 2.0, correct=correct, tc=8)
    fn = make_advantage_fn("grpo", ("dra",), ("progrpo",),
                           options={"grpo": {"eps": 1e-6}, "progrpo": {"alpha": 0.5}})
    adv, diag = jax.jit(fn)(ro)
    tilde = np_dra(ro.rewards, ro.embeddings, floor=0.1)
    ca = np_answer_conf(ro.logprobs, ro.completion_mask)
    cq = np_prompt_conf(np.asarray(ro.prompt_logprobs), np.asarray(ro.prompt_mask))
    ref = np_arm(np_grpo(tilde, eps=1e-6), correct, ca, cq, alpha=0.5)
    np.testing.assert_allclose(adv, ref, rtol=1e-4, atol=1e-5)
    assert adv.shape == (3, 4)
    for k in ("dra/weight_mean", "grpo/frac_zero_spread_groups", "progrpo/correction_mean"):
        assert k in diag
    # The final advantages' statistics, once, over members (float64 reference).
    a64 = np.asarray(ref, np.float64).ravel()
    for k, want in (("mean", a64.mean()), ("abs_mean", np.abs(a64).mean()), ("std", a64.std()),
                    ("min", a64.min()), ("max", a64.max())):
        np.testing.assert_allclose(diag[f"adv/{k}"], want, rtol=1e-4, atol=1e-5)
    assert [k for k in diag if "adv_" in k or k.endswith("/adv_mean")] == []
    for v in diag.values():
        assert isinstance(v, jax.Array) and v.shape == ()


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dagrpo"])
def test_registry_baselines_by_name(name):
    ro = make_rollout(np.asarray([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    adv, diag = jax.jit(make_advantage_fn(name))(ro)
    assert adv.shape == (2, 3) and np.all(np.isfinite(adv))
    assert np.all(np.asarray(adv)[1] == 0.0) or name == "dagrpo"


def test_registry_dagrpo_by_name_matches_function():
    ro = make_rollout(np.asarray([[1.0, 0.0, 1.0, 0.0]]), seed=7)
    adv, diag = jax.jit(make_advantage_fn("dagrpo",
                                          options={"dagrpo": {"tau": 0.05, "alpha": 0.3}}))(ro)
    s = np.asarray(ro.correct, np.float64) + 0.3 * np.asarray(ro.fine_scores, np.float64)
    np.testing.assert_allclose(adv, np_dagrpo(s, tau=0.05), rtol=1e-5, atol=1e-6)
    assert "dagrpo/frac_pairs_masked" in diag


def test_registry_anchor_rollout_through_composition():
    correct = np.zeros((2, 3), bool)
    correct[1, 0] = True
    ro = make_rollout(correct.astype(np.float32), correct=correct, emb=False)
    ro = add_anchors(ro, jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4), bool))
    adv, _ = jax.jit(make_advantage_fn("dr_grpo", advantage_transforms=("progrpo",)))(ro)
    base, _ = jax.jit(make_advantage_fn("dr_grpo"))(ro)
    assert adv[0, 3] > 0 and adv[1, 3] == 0.0
    # Group 0's own samples are all wrong: the anchor does not switch ARM on there.
    np.testing.assert_array_equal(adv[0], base[0])
    assert np.all(np.asarray(adv[1, :3] != base[1, :3]))


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown advantage transform 'grpoo'"):
        make_advantage_fn("grpoo")
    with pytest.raises(ValueError, match="'drx'"):
        make_advantage_fn("grpo", reward_transforms=("drx",))
    with pytest.raises(ValueError, match="not a baseline"):
        make_advantage_fn("dra")
    with pytest.raises(ValueError, match="not a reward"):
        make_advantage_fn("grpo", reward_transforms=("progrpo",))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epsilon'\].*'grpo'"):
        make_advantage_fn("grpo", options={"grpo": {"epsilon": 1e-4}})
    with pytest.raises(ValueError, match="not in the chain"):
        make_advantage_fn("grpo", options={"dra": {"eps": 1e-6}})
    with pytest.raises(ValueError, match="twice"):
        make_advantage_fn("grpo", ("dra", "dra"))
    with pytest.raises(ValueError, match="no effect"):
        make_advantage_fn("dagrpo", ("dra",))
    make_advantage_fn("dagrpo", ("dra",), options={"dagrpo": {"score": "reward"}})


def test_registry_all_masked_completion_and_group():
    ro = make_rollout(np.asarray([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), empty=(0, 1))
    ro = ro.replace(member_mask=jnp.asarray([[True, True, True], [False, False, False]]))
    adv, diag = jax.jit(make_advantage_fn("grpo", ("dra",), ("progrpo",)))(ro)
    assert np.all(np.isfinite(adv)) and np.all(np.asarray(adv)[1] == 0.0)
    assert all(np.isfinite(v) for v in diag.values())
    # The empty completion keeps its baseline advantage (no ARM correction).
    base, _ = jax.jit(make_advantage_fn("grpo", ("dra",)))(ro)
    assert float(adv[0, 1]) == float(base[0, 1])


def test_registry_nonfinite_reward_through_composition():
    ro = make_rollout(np.asarray([[1.0, np.nan, 0.0, 1.0]]))
    adv, diag = jax.jit(make_advantage_fn("grpo", ("dra",)))(ro)
    assert np.all(np.isfinite(adv)) and float(adv[0, 1]) == 0.0
    assert float(diag["grpo/frac_nonfinite_rewards"]) == 0.25


def test_public_functions_return_diagnostics_on_request():
    r = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    adv, diag = grpo(r, return_diagnostics=True)
    np.testing.assert_allclose(adv, grpo(r))
    np.testing.assert_allclose(diag["frac_zero_spread_groups"], 0.5)
    e = make_rollout(np.ones((2, 3))).embeddings
    tilde, d = dra_reweight(r, e, return_diagnostics=True)
    np.testing.assert_allclose(tilde, dra_reweight(r, e))
    assert set(d) >= {"weight_mean", "frac_rows_floored"}


# ---------------------------------------------------------------- declared rollout needs


@pytest.mark.parametrize("chain,options,want", [
    (("grpo", (), ()), {}, set()),
    (("dr_grpo", (), ()), {}, set()),
    (("rloo", (), ()), {}, set()),
    (("grpo", ("dra",), ()), {}, {"embeddings"}),
    (("dagrpo", (), ()), {}, {"fine_scores"}),
    (("dagrpo", (), ()), {"dagrpo": {"score": "reward"}}, set()),
    (("dagrpo", (), ()), {"dagrpo": {"distinctiveness": "embedding"}},
     {"fine_scores", "embeddings"}),
    (("dagrpo", (), ()), {"dagrpo": {"score": "reward", "distinctiveness": "embedding"}},
     {"embeddings"}),
    (("grpo", (), ("progrpo",)), {}, {"prompt_logprobs"}),
    (("grpo", (), ("progrpo",)), {"progrpo": {"prompt_tokens": "question"}},
     {"prompt_logprobs", "question_mask"}),
    (("grpo", (), ("progrpo",)), {"progrpo": {"prompt_confidence_reading": "group_mean_answer"}},
     set()),
    (("dr_grpo", ("dra",), ("progrpo",)), {}, {"embeddings", "prompt_logprobs"}),
])
def test_required_inputs_and_one_step_with_exactly_those(chain, options, want):
    """The declared needs are what the chain reads: a rollout holding only those optional
    fields (prompt log-probs / question mask poisoned with NaN when not declared) gives finite
    advantages."""
    baseline, rt, at = chain
    need = required_inputs(baseline, rt, at, options)
    assert need == frozenset(want)
    correct = np.asarray([[1, 0, 1, 0], [1, 1, 1, 1]], bool)
    ro = make_rollout(correct * 1.0, correct=correct)
    ro = ro.replace(
        embeddings=ro.embeddings if "embeddings" in need else None,
        fine_scores=ro.fine_scores if "fine_scores" in need else None,
        prompt_logprobs=(ro.prompt_logprobs if "prompt_logprobs" in need
                         else jnp.full_like(ro.prompt_logprobs, jnp.nan)),
        question_mask=ro.prompt_mask if "question_mask" in need else None)
    adv, diag = jax.jit(make_advantage_fn(baseline, rt, at, options))(ro)
    assert np.all(np.isfinite(np.asarray(adv)))


def test_every_registered_transform_declares_its_needs():
    from jaxgrpo.advantages.registry import ROLLOUT_INPUTS, available_transforms

    for name in available_transforms():
        t = get_transform(name)
        assert t.required_inputs() <= set(ROLLOUT_INPUTS), name


def test_register_checks_the_signature_and_needs():
    from jaxgrpo.advantages import registry

    def bad(rewards, scale=1.0):  # an option before `*`
        return rewards, {}

    with pytest.raises(ValueError, match="scale"):
        registry.register_transform("bad", "baseline", bad)
    with pytest.raises(ValueError, match="logits"):
        registry.register_transform("bad", "baseline", grpo, needs={"logits"})

    def emb_baseline(rewards, embeddings, *, k: float = 1.0):
        return k * rewards, {}

    registry.register_transform("emb_baseline", "baseline", emb_baseline)
    try:
        assert required_inputs("emb_baseline") == {"embeddings"}  # derived from the signature
    finally:
        registry._REGISTRY.pop("emb_baseline")
    assert "bad" not in registry._REGISTRY
