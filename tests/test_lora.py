"""LoRA against PEFT (the test-only oracle): logits, gradients, merged checkpoints, state size."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxgrpo.lora import (LoraBranch, LoraConfig, adapter_paths, branch_supported,
                          dropout_keep_mask, init_adapters, merge_params, num_adapter_params)

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from tests._torch_oracle import left_padded_prompts, tiny_pair  # noqa: E402

TARGETS = {"qv": (["q_proj", "v_proj"], r"self_attn/(q_proj|v_proj)/kernel$"),
           "all": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                   r"(q|k|v|o|gate|up|down)_proj/kernel$")}


def _peft_model(arch, modules, rank, alpha, rslora=False, seed=0, dropout=0.0):
    tm, jm = tiny_pair(arch, seed=seed)
    cfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=dropout,
                          use_rslora=rslora)
    pm = peft.get_peft_model(tm, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # B != 0 so the adapters change the logits
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    pm.eval()
    return pm, jm


def _peft_key(block, proj, layer, which):
    return f"base_model.model.model.layers.{layer}.{block}.{proj}.{which}.default.weight"


def _copy_adapters(pm, params, cfg):
    """Our adapters with PEFT's values, stacked over the scanned layers:
    A[l] = lora_A.weight.T [in, r], B[l] = lora_B.weight.T [r, out]."""
    ad = init_adapters(params, cfg, jax.random.key(0))
    sd = {k: v.detach().double().numpy() for k, v in pm.state_dict().items()}
    for name in adapter_paths(params, cfg):
        parts = name.split("/")  # layers/<block>/<proj>/kernel, [L, in, out]
        block, proj = parts[1], parts[2]
        node = ad
        for p in parts[:-1]:
            node = node[p]
        n_layers = node["lora_a"].shape[0]
        for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            node[ours] = jnp.asarray(np.stack([sd[_peft_key(block, proj, i, theirs)].T
                                               for i in range(n_layers)]), jnp.float32)
    return ad


def _inputs():
    """Left-padded token ids [3, 9], their mask, and loss weights w [3, 9, 97]."""
    ids, mask = left_padded_prompts(np.random.RandomState(0), [7, 5, 9], 97)
    return ids, mask, np.random.RandomState(1).randn(*ids.shape, 97)


def _peft_loss_and_grads(pm, ids, mask, w):
    """PyTorch + PEFT: logits (float64), sum(w * log_softmax(logits)) over valid tokens (float64
    in the loss), and its gradient with respect to every lora_A / lora_B weight."""
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    tids = torch.as_tensor(ids, dtype=torch.long)
    out = pm(tids, attention_mask=torch.as_tensor(mask), position_ids=torch.as_tensor(pos)).logits
    loss = (torch.as_tensor(w) * torch.log_softmax(out.double(), -1)
            * torch.as_tensor(mask)[..., None]).sum()
    loss.backward()
    grads_t = {n: p.grad.double().numpy() for n, p in pm.named_parameters() if "lora_" in n}
    return out.detach().double().numpy(), float(loss.detach()), grads_t


def _weighted_logprob_sum(logits, w, mask):
    """The JAX side of ``_peft_loss_and_grads``' loss."""
    lp = jax.nn.log_softmax(logits, -1)
    return jnp.sum(jnp.asarray(w, jnp.float32) * lp * jnp.asarray(mask)[..., None])


def _assert_logits_and_loss_match(logits, loss, ref, loss_t, mask):
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], ref[valid], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(float(loss), loss_t, rtol=1e-4)


def _assert_adapter_grads_match(g, grads_t, params, cfg):
    """Our adapter gradients (stacked [L, ...]) against PEFT's per-layer lora_A / lora_B ones."""
    for name in adapter_paths(params, cfg):
        parts = name.split("/")
        node = g
        for p in parts[:-1]:
            node = node[p]
        for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            for i in range(node[ours].shape[0]):
                gt = grads_t[_peft_key(parts[1], parts[2], i, theirs)].T
                gj = np.asarray(node[ours][i], np.float64)
                np.testing.assert_allclose(gj, gt, atol=1e-3 * np.abs(gt).max() + 1e-6,
                                           rtol=1e-3)


@pytest.mark.parametrize("arch,which,rslora", [("qwen2", "qv", False), ("llama", "all", False),
                                               ("qwen2", "all", True)])
def test_logits_and_gradients_match_peft(arch, which, rslora):
    modules, regex = TARGETS[which]
    rank, alpha = 4, 8.0
    pm, jm = _peft_model(arch, modules, rank, alpha, rslora)
    graphdef, params, rest = nnx.split(jm, nnx.Param, ...)
    cfg = LoraConfig(rank=rank, alpha=alpha, targets=regex, use_rslora=rslora)
    ad = _copy_adapters(pm, params, cfg)
    assert len(adapter_paths(params, cfg)) == len(modules)  # one stacked kernel per module

    ids, mask, w = _inputs()

    ref, loss_t, grads_t = _peft_loss_and_grads(pm, ids, mask, w)

    def jloss(adapters):
        model = nnx.merge(graphdef, merge_params(params, adapters, cfg), rest)
        logits = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
        return _weighted_logprob_sum(logits, w, mask), logits

    (lj, logits), g = jax.value_and_grad(jloss, has_aux=True)(ad)
    _assert_logits_and_loss_match(logits, lj, ref, loss_t, mask)
    valid = mask.astype(bool)
    # the adapters really changed the function
    base_logits = nnx.merge(graphdef, params, rest)(jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert np.max(np.abs(np.asarray(base_logits) - ref)[valid]) > 1e-2
    _assert_adapter_grads_match(g, grads_t, params, cfg)


def test_init_matches_peft_and_starts_at_base():
    tm, jm = tiny_pair("qwen2")
    graphdef, params, rest = nnx.split(jm, nnx.Param, ...)
    cfg = LoraConfig(rank=8, alpha=16.0, targets=TARGETS["all"][1])
    ad = init_adapters(params, cfg, jax.random.key(3))
    merged = merge_params(params, ad, cfg)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(merged)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # B = 0: base function
    a = ad["layers"]["mlp"]["down_proj"]["lora_a"]  # [L=2, in=80, r]
    bound = 1.0 / np.sqrt(80)
    assert a.shape == (2, 80, 8) and float(jnp.max(jnp.abs(a))) <= bound
    # PEFT's kaiming_uniform_(a=sqrt(5)) has std bound / sqrt(3)
    np.testing.assert_allclose(float(jnp.std(a)), bound / np.sqrt(3), rtol=0.15)
    assert float(jnp.max(jnp.abs(ad["layers"]["mlp"]["down_proj"]["lora_b"]))) == 0.0
    assert cfg.scale == 2.0 and LoraConfig(rank=4, alpha=8.0, use_rslora=True).scale == 4.0


def test_optimizer_state_scales_with_adapters_only():
    _, jm = tiny_pair("llama")
    _, params, _ = nnx.split(jm, nnx.Param, ...)
    tx = optax.adamw(1e-3)
    for rank in (2, 8):
        ad = init_adapters(params, LoraConfig(rank=rank), jax.random.key(0))
        state = tx.init(ad)
        moment_elems = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
        assert moment_elems == 2 * num_adapter_params(ad)  # mu and nu, nothing of the base
    n_base = sum(x.size for x in jax.tree.leaves(params))
    ad8 = init_adapters(params, LoraConfig(rank=8), jax.random.key(0))
    ad2 = init_adapters(params, LoraConfig(rank=2), jax.random.key(0))
    assert num_adapter_params(ad8) == 4 * num_adapter_params(ad2) < n_base


def test_merged_checkpoint_equals_peft_merge_and_unload(tmp_path, tiny_tokenizer):
    import transformers
    from jaxgrpo.models import save_pretrained

    modules, regex = TARGETS["qv"]
    pm, jm = _peft_model("qwen2", modules, 4, 8.0)
    graphdef, params, rest = nnx.split(jm, nnx.Param, ...)
    cfg = LoraConfig(rank=4, alpha=8.0, targets=regex)
    ad = _copy_adapters(pm, params, cfg)
    merged = nnx.merge(graphdef, merge_params(params, ad, cfg), rest)
    path = save_pretrained(merged, tiny_tokenizer, str(tmp_path / "merged"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    ref = pm.merge_and_unload().eval()
    ids = torch.as_tensor(np.random.RandomState(0).randint(3, 97, (2, 6)), dtype=torch.long)
    with torch.no_grad():
        np.testing.assert_allclose(hf(ids).logits.numpy(), ref(ids).logits.numpy(), atol=1e-4)


def test_bad_targets_and_dropout_are_refused():
    _, jm = tiny_pair("qwen2")
    _, params, _ = nnx.split(jm, nnx.Param, ...)
    with pytest.raises(ValueError, match="match no kernel"):
        init_adapters(params, LoraConfig(targets="not_a_module"), jax.random.key(0))
    with pytest.raises(ValueError, match="dropout"):
        LoraConfig(dropout=1.0)
    assert LoraConfig(dropout=0.05).dropout == 0.05
    with pytest.raises(ValueError, match="regex"):
        LoraConfig(targets="(")


def test_adapter_specs_follow_kernel_layout():
    from jax.sharding import PartitionSpec as P

    from jaxgrpo.sharding import DEFAULT_RULES, match_partition_rules

    _, jm = tiny_pair("qwen2")
    _, params, _ = nnx.split(jm, nnx.Param, ...)
    ad = init_adapters(params, LoraConfig(rank=4, targets=TARGETS["all"][1]), jax.random.key(0))
    specs = match_partition_rules(DEFAULT_RULES, ad)
    q = specs["layers"]["self_attn"]["q_proj"]
    o = specs["layers"]["self_attn"]["o_proj"]
    # q kernel [E, H*D] is ("fsdp", "tensor"), o kernel [H*D, E] is ("tensor", "fsdp"); the
    # stacked layer axis leads, replicated.
    assert q["lora_a"] == P(None, "fsdp", None) and q["lora_b"] == P(None, None, "tensor")
    assert o["lora_a"] == P(None, "tensor", None) and o["lora_b"] == P(None, None, "fsdp")


@pytest.mark.parametrize("dropout", [0.0, pytest.param(0.1, marks=pytest.mark.slow)])
def test_lora_run_trains_only_adapters_and_restores_merged(tiny_llama_dir, tiny_run_config,
                                                          tmp_path, dropout):
    """config.lora.rank > 0 through the Trainer: the state (and so the optimizer state and the
    checkpoint) holds only the adapters, the base stays bit-for-bit frozen, the KL reference is
    the base, and a run directory's checkpoint loads back as base + merged adapters."""
    from jaxgrpo.loop import Trainer
    from jaxgrpo.policy_io import load_run_policy

    c = tiny_run_config(tiny_llama_dir, tmp_path / "run", **{
        "lora.rank": 4, "lora.alpha": 8.0, "steps": 2, "checkpoint.every": 1,
        "loss.beta": 0.1, "optim.lr": 5e-2, "lora.dropout": dropout})
    t = Trainer(c)
    try:
        base_before = [np.asarray(x) for x in jax.tree.leaves(t.frozen)]
        n_adapter = num_adapter_params(t.state.params)
        moments = sum(x.size for x in jax.tree.leaves(t.state.opt_state) if x.ndim > 0)
        assert moments == 2 * n_adapter  # Adam's mu and nu: nothing of the base
        assert n_adapter < sum(x.size for x in base_before) / 4
        t.train()
        for a, b in zip(base_before, jax.tree.leaves(t.frozen)):
            np.testing.assert_array_equal(a, np.asarray(b))
        lora_b = [np.asarray(x) for x in jax.tree.leaves(t.state.params)]
        assert max(np.abs(x).max() for x in lora_b) > 0  # B left zero: the adapters trained
        assert t.history[-1]["kl_mean"] > 0  # the policy moved off the base (the reference)
        expected = t.model_state()
    finally:
        t.close()
    model, _, _ = load_run_policy(tmp_path / "run")
    _, got = nnx.split(model)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_lora_config_errors_name_the_key():
    from jaxgrpo.experiment import base_config, validate

    c = base_config()
    c.lora.rank = 4
    c.lora.dropout = 0.1
    validate(c)  # dropout runs the unmerged branch
    c.lora.dropout = 1.0
    with pytest.raises(ValueError, match="config.lora.dropout"):
        validate(c)


# ------------------------------------------------------------------ LoRA dropout (unmerged form)


class _FixedMask(torch.nn.Module):
    """PEFT's ``lora_dropout`` module replaced by a given inverted-dropout multiplier."""

    def __init__(self, mask):
        super().__init__()
        self.mask = torch.as_tensor(np.array(mask, np.float32))

    def forward(self, x):
        return x * self.mask


def _branch_keys(key, n_layers, block, proj):
    """The dropout key of (layer, block, proj) as the decoder derives it from the branch key."""
    top = LoraBranch(adapters={"layers": {block: {proj: {}}}}, key=key, scale=1.0, rate=0.5)
    out = []
    for i in range(n_layers):
        lb = top.sub("layers").fold(i).sub(block)
        out.append(lb._fold(proj))
    return out


@pytest.mark.parametrize("arch,which,rate", [
    ("llama", "all", 0.3), pytest.param("qwen2", "qv", 0.0, marks=pytest.mark.slow)])
def test_unmerged_branch_matches_peft_dropout(arch, which, rate):
    """``x W + scale * dropout(x) A B`` in the decoder (``Decoder(..., lora=LoraBranch)``) against
    PEFT's ``lora_dropout`` with the same Bernoulli masks: logits and adapter gradients. With
    rate 0 the unmerged branch is the merged kernel (and PEFT without dropout)."""
    modules, regex = TARGETS[which]
    rank, alpha = 4, 8.0
    pm, jm = _peft_model(arch, modules, rank, alpha, dropout=rate)
    graphdef, params, rest = nnx.split(jm, nnx.Param, ...)
    cfg = LoraConfig(rank=rank, alpha=alpha, targets=regex, dropout=rate)
    ad = _copy_adapters(pm, params, cfg)
    key = jax.random.key(7)

    ids, mask, w = _inputs()
    n_layers = jm.num_layers
    c = jm.config
    widths = {"q_proj": c.hidden_size, "k_proj": c.hidden_size, "v_proj": c.hidden_size,
              "o_proj": c.num_attention_heads * c.head_dim, "gate_proj": c.hidden_size,
              "up_proj": c.hidden_size, "down_proj": c.intermediate_size}
    pm.train()  # PEFT applies lora_dropout in training mode only
    if rate > 0:
        drop_fracs = []
        for name in modules:
            block = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            for i, k in enumerate(_branch_keys(key, n_layers, block, name)):
                m = np.asarray(dropout_keep_mask(k, (*ids.shape, widths[name]), rate))
                drop_fracs.append(np.mean(m == 0))
                layer = pm.base_model.model.model.layers[i]
                getattr(getattr(layer, block), name).lora_dropout["default"] = _FixedMask(m)
        # the masks are Bernoulli(rate) and differ per layer / projection
        assert abs(np.mean(drop_fracs) - rate) < 0.02 and len(set(drop_fracs)) > 1
    ref, loss_t, grads_t = _peft_loss_and_grads(pm, ids, mask, w)

    base = nnx.merge(graphdef, params, rest)

    def jloss(adapters):
        branch = LoraBranch.from_config(adapters, cfg, key)
        logits = base(jnp.asarray(ids), attention_mask=jnp.asarray(mask), lora=branch)
        return _weighted_logprob_sum(logits, w, mask), logits

    (lj, logits), g = jax.value_and_grad(jloss, has_aux=True)(ad)
    _assert_logits_and_loss_match(logits, lj, ref, loss_t, mask)
    valid = mask.astype(bool)
    merged = nnx.merge(graphdef, merge_params(params, ad, cfg), rest)(
        jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    gap = np.max(np.abs(np.asarray(merged) - np.asarray(logits))[valid])
    if rate > 0:
        assert gap > 1e-2  # dropout really changed the function
    else:
        assert gap < 1e-4  # unmerged == merged without dropout
    _assert_adapter_grads_match(g, grads_t, params, cfg)


def test_dropout_keep_mask_is_inverted_bernoulli():
    m = np.asarray(dropout_keep_mask(jax.random.key(0), (200_000,), 0.25))
    assert set(np.unique(m).tolist()) == {0.0, np.float32(1 / 0.75)}
    assert abs(np.mean(m == 0) - 0.25) < 0.005
    assert abs(np.mean(m) - 1.0) < 0.01  # E[mask] = 1: unbiased in expectation


def test_branch_refuses_adapters_outside_the_layers():
    _, jm = tiny_pair("qwen2")
    graphdef, params, rest = nnx.split(jm, nnx.Param, ...)
    cfg = LoraConfig(rank=2, targets=r"(q_proj/kernel|lm_head/kernel)$", dropout=0.1)
    ad = init_adapters(params, cfg, jax.random.key(0))
    assert "lm_head" in ad and not branch_supported(ad)
    assert branch_supported(init_adapters(params, LoraConfig(rank=2), jax.random.key(0)))
    with pytest.raises(ValueError, match="layers' projections only"):
        jm(jnp.ones((1, 3), jnp.int32), lora=LoraBranch.from_config(ad, cfg, jax.random.key(1)))


def _update_inputs(dropout, pi_old="trainer"):
    from jaxgrpo.experiment import base_config, validate
    from jaxgrpo.train import build_optimizer, init_train_state, make_update_fn, split_model
    from tests.test_train import _random_rollout, _tiny_model

    c = base_config()
    c.train.prompts_per_step, c.sampling.num_generations = 2, 4
    c.train.grad_accum = 2
    c.lora.rank, c.lora.alpha, c.lora.dropout = 4, 8.0, dropout
    c.optim.lr = 1e-2
    c.train.pi_old = pi_old
    validate(c)
    graphdef, params, rest = split_model(_tiny_model())
    adapters = init_adapters(params, LoraConfig(rank=4, alpha=8.0, dropout=dropout),
                             jax.random.key(0))
    # B != 0 so the dropout on A's input reaches the loss at the first step
    adapters = jax.tree.map(lambda x: x + 0.05, adapters)
    tx = build_optimizer(c)
    update = make_update_fn(c, graphdef, rest, tx)
    return update, init_train_state(adapters, tx, 0), _random_rollout(p=2), params


def test_update_with_lora_dropout_is_a_function_of_the_state():
    """The dropout masks come from (state.rng, state.step): the same state gives the same update
    (so an exact resume stays exact), another step other masks."""
    # With a fixed pi_old (the sampler's) the loss value carries the masks through the ratio.
    update, state, ro, frozen = _update_inputs(0.2, pi_old="sampler")
    cp = lambda s: jax.tree.map(jnp.copy, s)
    s1, m1 = update(cp(state), ro, None, frozen)
    s2, m2 = update(cp(state), ro, None, frozen)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    s3, m3 = update(cp(state).replace(step=state.step + 1), ro, None, frozen)
    assert float(m3["loss"]) != float(m1["loss"])
    assert np.isfinite(float(m1["loss"])) and float(m1["grad_norm"]) > 0
    # The trainer's pi_old (the default) is the dropout pass's own detached log-probs: the ratio
    # is 1 and the loss value -A carries no mask, so the masks show in the gradient.
    update, state, ro, frozen = _update_inputs(0.2)
    t1, n1 = update(cp(state), ro, None, frozen)
    t2, _ = update(cp(state), ro, None, frozen)
    for a, b in zip(jax.tree.leaves(t1.params), jax.tree.leaves(t2.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    t3, _ = update(cp(state).replace(step=state.step + 1), ro, None, frozen)
    assert float(n1["ratio_min"]) == 1.0 == float(n1["ratio_max"])
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(t3.params), jax.tree.leaves(t1.params)))


def test_trainer_refuses_dropout_on_a_kernel_outside_the_layers(tiny_qwen2_dir, tiny_run_config,
                                                               tmp_path):
    from jaxgrpo.errors import ConfigError
    from jaxgrpo.loop import Trainer

    c = tiny_run_config(tiny_qwen2_dir, tmp_path / "run", **{
        "lora.rank": 2, "lora.dropout": 0.1, "lora.targets": r"(q_proj|lm_head)/kernel$"})
    with pytest.raises(ConfigError, match=r"config.lora.dropout.*lm_head"):
        Trainer(c)
    _, jm = tiny_pair("qwen2")
    _, params, _ = nnx.split(jm, nnx.Param, ...)
    # an embedding table is not a kernel: never adapted (merge_params would ignore it)
    with pytest.raises(ValueError, match="match no kernel"):
        init_adapters(params, LoraConfig(targets=r"embed_tokens"), jax.random.key(0))
