"""Shared fixtures: tiny random Qwen2 / Llama checkpoints written by transformers (PyTorch).

- ``tiny_tokenizer``: a byte-level BPE tokenizer (~300 tokens, ChatML specials and template)
  trained in memory; saved into every checkpoint directory as tokenizer.json.
- ``make_tiny_checkpoint(name, arch, *, shard=False, torch_dtype="float32", **config)``: a
  session-cached factory; returns the directory of a randomly initialised checkpoint (all weights,
  norms and biases random, so that a mis-mapped tensor changes the logits).
- ``tiny_qwen2_dir``: Qwen2, head_dim 16 != hidden/heads = 12, untied lm_head, GQA with one KV head.
- ``tiny_llama_dir``: Llama, tied embeddings, GQA 6/2, llama3 rope scaling.

Tests that need torch skip when it is absent (it is the numerical oracle, a test-only dependency).

Compile time dominates this suite on a 2-core CPU (the tiny update compiles in ~10 s and runs in
milliseconds), so the session (and every subprocess it starts, through the environment):
- compiles with LLVM at -O0 (``--xla_backend_optimization_level=0``: ~40% less compile time, same
  HLO passes, so numerics keep float32 semantics; set ``JAXGRPO_TEST_XLA_OPT=1`` to keep XLA's
  default),
- applies the command line's XLA:CPU settings (``jaxgrpo.cpu``: YNNPACK for dots only, huge
  pages for large allocations in the workers), and
- shares one persistent compilation cache in a fresh temporary folder, so the many Trainers built
  from the same tiny config load the sampler and update instead of recompiling them. Tests that
  count compilations count JAX's "Compiling" log lines, which are written before the cache lookup.

``-m slow`` runs the slow set (excluded by default, see pytest.ini); ``-m "slow or not slow"``
runs everything.
"""
from __future__ import annotations

import os
import tempfile

if os.environ.get("JAXGRPO_TEST_XLA_OPT", "0") != "1" and \
        "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAXGRPO_COMPILATION_CACHE", tempfile.mkdtemp(prefix="jaxgrpo-test-xla-"))
# The CLI's XLA:CPU settings (jaxgrpo.cpu.process), so tests compute what a run computes; the malloc
# tunable reaches the xdist workers and subprocesses through the environment (this process was
# started without it, and is not restarted).
from jaxgrpo.cpu.process import tuned_environment  # noqa: E402

os.environ.update(tuned_environment())

import pytest

TINY_VOCAB = 320  # >= the tiny tokenizer's vocabulary; the extra rows are never produced
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Question: what is 12 + 30? Answer: 42. Let me think step by step.",
    "def add(a, b):\n    return a + b\n\n# numbers 0123456789 and symbols !?%$",
    "Héllo wörld — unicode ünïcödé, emojis 🙂, and   spaces\ttabs\nnewlines.",
]


def pytest_configure(config):
    import jax

    path = os.environ["JAXGRPO_COMPILATION_CACHE"]
    if path.lower() not in ("0", "off", "false", "no", ""):
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A transformers ``PreTrainedTokenizerFast`` (byte-level BPE, ChatML special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_CORPUS * 20, trainer=trainer)
    assert tk.get_vocab_size() <= TINY_VOCAB
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE)


def _randomize_(model, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)


@pytest.fixture(scope="session")
def make_tiny_checkpoint(tmp_path_factory, tiny_tokenizer):
    """Factory: ``make_tiny_checkpoint(name, arch, *, shard=False, torch_dtype="float32",
    seed=0, **config_overrides) -> str`` (a checkpoint directory, built once per name)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    built = {}

    def make(name, arch, *, shard=False, torch_dtype="float32", seed=0, **overrides):
        if name in built:
            return built[name]
        base = dict(vocab_size=TINY_VOCAB, hidden_size=48, intermediate_size=80,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=128, bos_token_id=None,
                    eos_token_id=tiny_tokenizer.eos_token_id,
                    pad_token_id=tiny_tokenizer.pad_token_id)
        base.update(overrides)
        cls_cfg, cls_model = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                              "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}[arch]
        torch.manual_seed(seed)
        model = cls_model(cls_cfg(**base))
        _randomize_(model, seed)
        model = model.to(getattr(torch, torch_dtype)).eval()
        path = os.path.join(str(root), name)
        kw = {"max_shard_size": "40KB"} if shard else {}
        model.save_pretrained(path, **kw)
        tiny_tokenizer.save_pretrained(path)
        built[name] = path
        return path

    return make


@pytest.fixture(scope="session")
def tiny_qwen2_dir(make_tiny_checkpoint):
    return make_tiny_checkpoint("qwen2", "qwen2", num_attention_heads=4, num_key_value_heads=1,
                                head_dim=16, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_llama_dir(make_tiny_checkpoint):
    return make_tiny_checkpoint(
        "llama", "llama", num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})


@pytest.fixture(scope="session")
def tiny_run_config():
    """Factory ``tiny_run_config(model_dir, run_dir, **overrides) -> ConfigDict``: a training run
    that takes seconds (tiny random checkpoint, 4 steps of 2 prompts x G=4, 8 new tokens; held-out
    evaluation on 2 prompts x 2 samples). Overrides use dotted keys: ``{"checkpoint.every": 1}``.

    Rewards: the cosine length-scaled reward varies with completion length, so a random policy
    still gets non-zero advantages (the update really changes the params)."""
    from jaxgrpo.experiment import base_config

    def make(model_dir, run_dir, **overrides):
        c = base_config()
        c.name = "test"
        c.run_dir = str(run_dir)
        c.steps = 4
        c.model.path = model_dir
        c.data.template = "plain"
        c.data.prompt_format = "{question}"
        c.data.max_prompt_tokens = 48
        c.data.train_size = 16
        c.data.eval_size = 4
        c.sampling.num_generations = 4
        c.sampling.max_new_tokens = 8
        c.rewards.cosine = 1.0
        c.train.prompts_per_step = 2
        c.optim.lr = 1e-2
        c.eval.num_prompts = 2
        c.eval.num_samples = 2
        c.eval.ks = "1,2"
        c.log.progress = False
        c.log.tensorboard = False
        c.checkpoint.every = 0
        c.update_from_flattened_dict(overrides)
        return c

    return make


@pytest.fixture(scope="session")
def trained(tiny_llama_dir, tiny_run_config, tmp_path_factory):
    """(run_dir, final params as numpy leaves) of a 2-step tiny run with a checkpoint per step;
    read by tests/test_policy_io.py and tests/experiments/test_evaluate.py (the CLI adds eval/)."""
    import jax
    import numpy as np

    from jaxgrpo.loop import Trainer

    run_dir = tmp_path_factory.mktemp("evalcli") / "run"
    t = Trainer(tiny_run_config(tiny_llama_dir, run_dir, **{
        "name": "evalcli", "steps": 2, "checkpoint.every": 1, "checkpoint.keep": 2}))
    try:
        t.train()
        params = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(t.state.params))]
    finally:
        t.close()
    return str(run_dir), params
