"""Tests for jaxgrpo.models.splash's block lengths by hand (the kernel itself runs through the
Pallas interpreter in tests/models/test_attention.py, against the reference attention)."""
from __future__ import annotations

from jaxgrpo.models.splash import splash_blocks


def test_block_is_a_multiple_of_128_no_longer_than_the_padded_sequence():
    assert splash_blocks(1000, 512) == 512
    assert splash_blocks(1000, 300) == 256  # rounded down to a multiple of 128
    assert splash_blocks(1000, 64) == 128  # at least one lane block
    assert splash_blocks(200, 512) == 256  # the sequence rounded up to 128
    assert splash_blocks(100, 512) == 128
