"""Run by tests/test_train.py in a subprocess with 8 fake CPU devices: trains the tiny config on
a data x fsdp x tensor mesh and prints the per-step metrics as JSON on the last line."""
import json
import sys

import jax

from jaxgrpo.experiment import base_config


def main(model_dir, run_dir, data, fsdp, tensor, overrides):
    from jaxgrpo.loop import Trainer

    assert jax.device_count() == 8, jax.devices()
    c = base_config()
    c.update_from_flattened_dict(json.loads(overrides))
    c.model.path, c.run_dir = model_dir, run_dir
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = int(data), int(fsdp), int(tensor)
    t = Trainer(c)
    spec = str(t.state.params["layers"]["self_attn"]["q_proj"]["kernel"].sharding.spec)
    t.train()
    t.close()
    recs = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
    print(json.dumps({"q_spec": spec, "metrics": recs}))


if __name__ == "__main__":
    main(*sys.argv[1:])
