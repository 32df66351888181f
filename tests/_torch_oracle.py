"""Tiny transformers (PyTorch) Qwen2 / Llama models with random weights, copied into our Decoder.

Used by the sampling / log-prob tests as the independent numerical oracle.
"""
import numpy as np

from jaxgrpo.models.config import ModelConfig
from jaxgrpo.models.decoder import Decoder


def copy_torch_weights(model: Decoder, torch_model) -> Decoder:
    """Copy a transformers *ForCausalLM state dict into ``model`` (in place); returns it."""
    sd = {k: v.detach().float().numpy() for k, v in torch_model.state_dict().items()}
    model.embed_tokens.embedding[...] = sd["model.embed_tokens.weight"]
    model.norm.weight[...] = sd["model.norm.weight"]
    if model.lm_head is not None:
        model.lm_head.kernel[...] = sd["lm_head.weight"].T
    # Layers are stacked: each parameter is one [L, ...] array, layer i at index i.
    n = model.config.num_hidden_layers
    layers = model.layers

    def stack(fmt, transpose=False):
        return np.stack([sd[f"model.layers.{i}." + fmt].T if transpose
                         else sd[f"model.layers.{i}." + fmt] for i in range(n)])

    layers.input_layernorm.weight[...] = stack("input_layernorm.weight")
    layers.post_attention_layernorm.weight[...] = stack("post_attention_layernorm.weight")
    for name in ["q_proj", "k_proj", "v_proj", "o_proj"]:
        lin = getattr(layers.self_attn, name)
        lin.kernel[...] = stack(f"self_attn.{name}.weight", transpose=True)
        if lin.bias is not None:
            lin.bias[...] = stack(f"self_attn.{name}.bias")
    for name in ["gate_proj", "up_proj", "down_proj"]:
        getattr(layers.mlp, name).kernel[...] = stack(f"mlp.{name}.weight", transpose=True)
    return model


def tiny_pair(arch: str, *, vocab=97, seed=0, **overrides):
    """(torch_model, jax_model) of a tiny random ``arch`` ('qwen2' | 'llama') model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if arch == "qwen2":
        kw = dict(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                  tie_word_embeddings=False, max_position_embeddings=256)
        kw.update(overrides)
        hc = transformers.Qwen2Config(**kw)
        tm = transformers.Qwen2ForCausalLM(hc)
    elif arch == "llama":
        kw = dict(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                  max_position_embeddings=256)
        kw.update(overrides)
        hc = transformers.LlamaConfig(**kw)
        tm = transformers.LlamaForCausalLM(hc)
    else:
        raise ValueError(arch)
    # Larger-than-default init so the distributions are peaked enough to be interesting.
    with torch.no_grad():
        for prm in tm.parameters():
            if prm.ndim == 2:
                prm.normal_(0.0, 0.15)
    tm.eval()
    d = hc.to_dict()
    d["model_type"] = arch
    cfg = ModelConfig.from_hf_dict(d)
    return tm, copy_torch_weights(Decoder(cfg), tm)


def left_padded_prompts(rng: np.random.RandomState, lengths, vocab, pad_id=0, low=3):
    """Random left-padded prompts [P, max(lengths)] (ids in [low, vocab)) and their 0/1 mask."""
    tp = max(lengths)
    ids = np.full((len(lengths), tp), pad_id, np.int32)
    mask = np.zeros((len(lengths), tp), np.int32)
    for r, n in enumerate(lengths):
        ids[r, tp - n:] = rng.randint(low, vocab, n)
        mask[r, tp - n:] = 1
    return ids, mask


def torch_logits(torch_model, ids, mask):
    """Float64 NumPy logits [B, T, V] of a left/right-padded batch, positions from the mask."""
    import torch

    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    mask = torch.as_tensor(np.asarray(mask), dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = torch_model(ids, attention_mask=mask, position_ids=pos).logits
    return out.double().numpy()


def log_softmax64(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
