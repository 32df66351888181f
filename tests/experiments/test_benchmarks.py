"""The benchmark scripts' own arithmetic (their timings belong in their tables, not in tests)."""
import numpy as np
import pytest


def test_scaling_fit_recovers_a_power_law():
    from experiments.micro.bench_scaling import fit_exponent

    xs = [4, 8, 16]
    assert fit_exponent(xs, [3.0 * x ** 1.5 for x in xs]) == pytest.approx(1.5)
    assert fit_exponent(xs, [7.0] * 3) == pytest.approx(0.0, abs=1e-12)
    noisy = [2.0 * x * f for x, f in zip(xs, (1.05, 0.95, 1.02))]
    assert abs(fit_exponent(xs, noisy) - 1.0) < 0.1


def test_scaling_shape_is_a_valid_llama():
    from experiments.micro.bench_scaling import shape
    from jaxgrpo.models.config import ModelConfig

    for d in (64, 128, 256, 512):
        s = shape(d, 4, 512)
        ModelConfig(model_type="llama", **s)
        assert s["num_attention_heads"] * s["head_dim"] == d
        assert s["num_attention_heads"] % s["num_key_value_heads"] == 0
        assert s["intermediate_size"] % 8 == 0 and s["intermediate_size"] >= 2 * d
    np.testing.assert_equal(shape(256, 4, 512)["num_attention_heads"], 4)
