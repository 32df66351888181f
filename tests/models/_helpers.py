"""Shared by tests/models: batches and logits of transformers and jaxgrpo models."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest


torch = pytest.importorskip("torch")


transformers = pytest.importorskip("transformers")


def _batch(vocab, seed=0, b=3, t=11):
    """Random ids with a left-padded batch: rows 1 and 2 start with 3 and 6 padding tokens."""
    ids = np.random.RandomState(seed).randint(3, vocab, (b, t))
    mask = np.ones((b, t), np.int64)
    mask[1, :3] = 0
    mask[2, :6] = 0
    ids[mask == 0] = 0
    return ids, mask


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


def _jax_logits(model, ids, mask):
    return np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)), np.float32)


def _max_err(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


def _hf_model(path, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=dtype).eval()
