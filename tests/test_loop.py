"""Tests for jaxgrpo.loop's preflight: the mesh's -1 axis resolved against the device count and
the micro-batches divided over the batch devices, each refusal a ConfigError naming the keys."""
from __future__ import annotations

import pytest

from jaxgrpo.errors import ConfigError
from jaxgrpo.experiment import base_config
from jaxgrpo.loop import check_mesh_layout


def _cfg(**flat):
    c = base_config()
    c.update_from_flattened_dict(flat)
    return c


def test_minus_one_axis_takes_the_remaining_devices():
    c = _cfg(**{"mesh.data": -1, "mesh.fsdp": 2, "mesh.tensor": 1,
                "train.prompts_per_step": 8, "sampling.num_generations": 4,
                "train.num_minibatches": 1, "train.grad_accum": 1, "anchors.enabled": False})
    assert check_mesh_layout(c, n_devices=8) == (4, 2, 1)
    assert check_mesh_layout(c, n_devices=2) == (1, 2, 1)


def test_micro_batch_rows_must_divide_over_the_batch_devices():
    # 2 prompts x 4 = 8 rows in 1 micro-batch: 8 and 2 devices divide them, 3 does not
    c = _cfg(**{"mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1,
                "train.prompts_per_step": 2, "sampling.num_generations": 4,
                "train.num_minibatches": 1, "train.grad_accum": 1, "anchors.enabled": False})
    assert check_mesh_layout(c, n_devices=2) == (2, 1, 1)
    assert check_mesh_layout(c, n_devices=8) == (8, 1, 1)
    with pytest.raises(ConfigError) as e:
        check_mesh_layout(c, n_devices=3)
    msg = str(e.value)
    assert "\n" not in msg and "8 rows" in msg and "3 batch devices (mesh.data * mesh.fsdp)" in msg


def test_auto_grad_accum_without_a_dividing_count_names_its_keys():
    c = _cfg(**{"mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1,
                "train.prompts_per_step": 1, "sampling.num_generations": 4,
                "train.num_minibatches": 1, "train.grad_accum": 0, "anchors.enabled": False})
    # 4 rows: 1 micro-batch of 4 or 4 of 1 row fit 1, 2 or 4 devices (2 of 2 rows split a group)
    assert check_mesh_layout(c, n_devices=4) == (4, 1, 1)
    with pytest.raises(ConfigError, match=r"config\.train\.grad_accum=0 \(auto\).*3 batch devices"):
        check_mesh_layout(c, n_devices=3)
