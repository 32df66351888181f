"""Tests for jaxgrpo.models.config: RoPE inverse frequencies by hand (default and linear scaling)."""
from __future__ import annotations

import numpy as np

from jaxgrpo.models.config import ModelConfig, rope_inv_freq


def _cfg(**kw):
    return ModelConfig(model_type="llama", vocab_size=16, hidden_size=8, intermediate_size=16,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=4, **kw)


def test_default_rope_inverse_frequencies():
    # head_dim 4: theta^(-0/4), theta^(-2/4)
    np.testing.assert_allclose(rope_inv_freq(_cfg(rope_theta=10000.0)), [1.0, 0.01], rtol=1e-15)
    np.testing.assert_allclose(rope_inv_freq(_cfg(rope_theta=100.0)), [1.0, 0.1], rtol=1e-15)


def test_linear_rope_scaling_divides_by_the_factor():
    cfg = _cfg(rope_theta=10000.0, rope_scaling=(("factor", 4.0), ("rope_type", "linear")))
    np.testing.assert_allclose(rope_inv_freq(cfg), [0.25, 0.0025], rtol=1e-15)
