"""jaxgrpo.micro_batch: train.grad_accum = 0 ("auto") chosen from the compiled update's memory."""
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from jaxgrpo.errors import ConfigError
from jaxgrpo.experiment import base_config, validate
from jaxgrpo.micro_batch import (CPU_TOKENS_PER_MICRO_BATCH, abstract_rollout,
                                 choose_grad_accum, grad_accum_candidates, preference,
                                 with_grad_accum)
from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import Decoder
from jaxgrpo.train import init_train_state, make_update_fn, split_model


def _config(p=4, g=4, **kw):
    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = p, g
    for k, v in kw.items():
        section, name = k.split(".")
        c[section][name] = v
    return c


def test_candidates_are_whole_groups_the_batch_devices_divide():
    # 16 rows in groups of 4: 1, 2 or 4 micro-batches (8 would split groups; 3 does not divide)
    assert grad_accum_candidates(_config()) == [1, 2, 4]
    # anchors add a member: 4 groups of 5 = 20 rows, still 1, 2, 4 micro-batches of whole groups
    assert grad_accum_candidates(_config(**{"anchors.enabled": True})) == [1, 2, 4]
    # 8 batch devices: the 16 rows (n=1) or 8 rows (n=2) split over 8 devices, 4 rows do not
    assert grad_accum_candidates(_config(), batch_devices=8) == [1, 2]
    # two minibatches of 8 rows: each splits into 1 or 2 micro-batches of whole groups
    assert grad_accum_candidates(_config(**{"train.num_minibatches": 2})) == [1, 2]
    assert grad_accum_candidates(_config(p=1, g=4), batch_devices=8) == []


def test_preference_by_backend():
    # 32 rows of 96 + 48 tokens: at most 1,792 tokens per micro-batch on the CPU -> 4 x 8 rows
    # (2 x 16 rows would be 2,304)
    c = _config(p=8, g=4)
    assert CPU_TOKENS_PER_MICRO_BATCH == 1792
    assert preference(c, [1, 2, 4, 8], "cpu") == [4, 8]
    assert preference(c, [1, 2, 4, 8], "gpu") == [1, 2, 4, 8]
    # the race's 32 rows of 96 + 128 tokens: 4 x 8 rows (1,792 tokens), its fastest on the CPU
    c = _config(p=4, g=8, **{"sampling.max_new_tokens": 128})
    assert preference(c, [1, 2, 4, 8], "cpu") == [4, 8]
    # nothing small enough: the most micro-batches first (and only)
    c = _config(p=8, g=4, **{"data.max_prompt_tokens": 2048})
    assert preference(c, [1, 2, 4, 8], "cpu") == [8]


def test_validate_accepts_auto_and_refuses_an_impossible_layout():
    validate(_config())  # the default: grad_accum 0
    c = _config(p=1, g=4, **{"mesh.data": 8})
    with pytest.raises(ConfigError, match=r"train\.grad_accum=0 \(auto\).*8 batch devices"):
        validate(c)


def _tiny_state(c):
    cfg = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8)
    graphdef, params, rest = split_model(Decoder(cfg, rngs=nnx.Rngs(0)))
    tx = optax.sgd(1e-2)
    return graphdef, rest, tx, init_train_state(params, tx, 0)


def test_choice_is_the_first_preferred_count_whose_compiled_peak_fits():
    c = _config(p=4, g=4, **{"data.max_prompt_tokens": 64, "sampling.max_new_tokens": 64})
    graphdef, rest, tx, state = _tiny_state(c)
    kw = dict(graphdef=graphdef, rest=rest, tx=tx, state=state, hidden_size=32)
    order = preference(c, grad_accum_candidates(c), jax.devices()[0].platform)
    free = choose_grad_accum(c, budget_bytes=1 << 40, **kw)
    assert free.grad_accum == order[0] and list(free.tried) == [order[0]]
    # the peak is the compiled program's: the update for that count, lowered independently
    ro = abstract_rollout(c, None, 32)
    m = make_update_fn(with_grad_accum(c, free.grad_accum), graphdef, rest, tx).lower(
        state, ro, None, None).compile().memory_analysis()
    assert free.peak_bytes == (m.argument_size_in_bytes + m.temp_size_in_bytes
                               + m.output_size_in_bytes - m.alias_size_in_bytes)
    assert free.rows_per_micro_batch == 16 // free.grad_accum
    # a budget just under the first count's peak: a later count that fits, or a one-line error
    budget = free.peak_bytes - 1
    try:
        tight = choose_grad_accum(c, budget_bytes=budget, **kw)
    except ConfigError as e:
        assert "no micro-batch count fits" in str(e) and "train.prompts_per_step" in str(e)
        assert "\n" not in str(e)
    else:
        assert tight.grad_accum > free.grad_accum and tight.peak_bytes <= budget
        assert all(peak > budget for n, peak in tight.tried.items() if n != tight.grad_accum)
    with pytest.raises(ConfigError, match="no micro-batch count fits"):
        choose_grad_accum(c, budget_bytes=1, **kw)


def test_with_grad_accum_copies():
    c = _config()
    d = with_grad_accum(c, 4)
    assert d.train.grad_accum == 4 and c.train.grad_accum == 0
