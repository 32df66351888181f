"""Per-device memory of a config's update and sampler, from an ahead-of-time compile: no GPU, no
weights.

    python -m experiments.memory_plan --config experiments/configs/dra_paper.py --mesh 1,4,1
    python -m experiments.memory_plan --config experiments/configs/dra_paper.py --mesh 1,8,1 \\
        --layers 2 --rows-per-device 3            # compile 1 and 2 layers, extrapolate to 28
    python -m experiments.memory_plan --config experiments/configs/dra_paper.py --mesh 1,4,1 \\
        --rows-per-device 3 --tpu v5p-8           # also XLA:TPU (needs the libtpu wheel)

Any ``--config.<key>=<value>`` override of ``experiments.run`` works. What it does:

1. builds the policy as ``jax.ShapeDtypeStruct``s only (``nnx.eval_shape``; nothing is
   allocated), lays parameters and optimizer state out with ``jaxgrpo.sharding.DEFAULT_RULES``
   and the rollout batch over ``('data', 'fsdp')``;
2. lowers and compiles the project's own ``jaxgrpo.train.make_update_fn`` (the jitted update,
   state donated) and ``jaxgrpo.sampling.make_sampler`` for those shapes, on ``D*F*T`` fake CPU
   devices (the script re-executes itself with ``XLA_FLAGS=--xla_force_host_platform_device_count``
   before JAX is imported) and, with ``--tpu``, for a Cloud TPU topology
   (``jax.experimental.topologies``; the XLA:TPU compiler refuses a program that does not fit in
   HBM, a direct yes or no);
3. prints per-device bytes: parameters, optimizer state, reference parameters, gradients,
   logits, activations and KV cache (those from the shapes; marked "estimate" where the layout
   is XLA's choice), then the compiled arguments, temporaries and outputs from
   ``compiled.memory_analysis()``. The last line is ``peak_gb_per_device=<GB>`` for the update:
   arguments + temporaries (of the TPU compile with ``--tpu``, else the CPU one; extrapolated to
   the model's depth with ``--layers``).

``--device NAME`` (repeatable; h100, h200, a100-40gb, a100-80gb, v5p: ``experiments.roofline``)
adds the time-and-cost plan: the update, the sampler's prefill and one decode step are compiled
again at 1 and 2 layers with every scan unrolled and ``naive`` attention (XLA's cost analysis
counts a loop body once), their ``cost_analysis()`` FLOPs and bytes extrapolated to the model's
depth, and the roofline time of a step (update + prefill + max_new_tokens decode steps),
of the run (``steps``) and its device-hours (``--price`` per device-hour: its cost) printed per
device, each ending with ``step_seconds_estimate[<device>]=<s>`` and
``run_hours_estimate[<device>]=<h>``, before the last line. The sampler programs are costed on
one device for the rows one device holds (P/(data*fsdp) prompts), with the full weights (an FSDP
decode gathers them). The decode step attends over a cache of Tp + Tc/2 slots (its mean fill).
Unvalidated until experiments.device_check measures the same programs on a GPU.

The model's shape comes from ``model.path`` (a checkpoint directory's config.json or a GGUF
file); when that path does not exist, from ``--shape NAME|FILE`` (a JSON in
experiments/configs/shapes/, Hugging Face config.json fields) or, automatically, from the shipped
shape whose name is the path's last component (``/path/to/DeepSeek-R1-Distill-Qwen-1.5B``).

``--layers N`` compiles N and N//2 layers (``--layers A,B``: A and B) and extrapolates the
arguments and temporaries linearly to the full depth (the arguments grow exactly linearly; the
temporaries only approximately: a peak set by one big buffer, such as full-vocabulary logits,
barely grows with depth, so compile at more layers when the slope matters).
Caveat: XLA:CPU upcasts bf16 dots to f32, so its temporaries are an upper bound; the TPU compile
is the sharper check. Compiling the paper shape takes minutes on a CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import re
import subprocess
import sys
import time

EXPERIMENTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_DIR = os.path.join(EXPERIMENTS, "configs", "shapes")
CHILD_ENV = "_JAXGRPO_MEMORY_PLAN_DEVICES"
GB = 1e9

# Cloud TPU accelerator types -> (topology name for jax.experimental.topologies, chips).
# The number in a v4 / v5p name counts TensorCores, two per chip: v5p-8 is 4 chips (2x2x1).
TPU_TYPES = {
    "v4-8": ("v4:2x2x1", 4), "v4-16": ("v4:2x2x2", 8), "v4-32": ("v4:2x2x4", 16),
    "v5p-8": ("v5:2x2x1", 4), "v5p-16": ("v5:2x2x2", 8), "v5p-32": ("v5:2x2x4", 16),
}


# ------------------------------------------------------------------------ command line (no jax)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m experiments.memory_plan", description=__doc__.split("\n\n")[0],
        epilog="--config FILE and --config.<key>=<value> are those of experiments.run.")
    p.add_argument("--config", default="",
                   help="experiment config file (default: that of experiments.run)")
    p.add_argument("--mesh", required=True,
                   help="data,fsdp,tensor mesh sizes, e.g. 1,4,1 (positive ints)")
    p.add_argument("--layers", default="",
                   help="compile N and N//2 layers (or 'A,B') and extrapolate to the model's depth")
    p.add_argument("--rows-per-device", type=int, default=0,
                   help="sequences per device per micro-batch; sets train.grad_accum")
    p.add_argument("--tpu", default="",
                   help=f"also compile for a TPU slice: {', '.join(TPU_TYPES)} or a topology "
                        "name such as v5:2x2x2 (needs the libtpu wheel)")
    p.add_argument("--shape", default="",
                   help="model shape when model.path does not exist: a name in "
                        "experiments/configs/shapes/ or a config.json path")
    p.add_argument("--skip-sampler", action="store_true", help="compile the update only")
    p.add_argument("--skip-update", action="store_true",
                   help="compile the sampler only (no peak_gb_per_device line)")
    p.add_argument("--skip-cpu", action="store_true", help="with --tpu: compile for TPU only")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--device", action="append", default=[],
                   help="time-and-cost plan for this accelerator (repeatable): h100, h200, "
                        "a100-40gb, a100-80gb, v5p (experiments/roofline.py)")
    p.add_argument("--price", type=float, default=None,
                   help="with --device: price per device-hour, for the run's cost")
    return p


def parse_mesh(text: str):
    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise SystemExit(f"memory_plan: --mesh must be three positive ints data,fsdp,tensor "
                         f"(e.g. 1,4,1), got {text!r}")
    return sizes


def parse_layers(text: str):
    """() = full depth; (n,) with n >= 2 -> (n // 2, n); 'a,b' -> (a, b) with a < b."""
    if not text:
        return ()
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"memory_plan: --layers must be N or A,B (ints), got {text!r}")
    if len(vals) == 1:
        if vals[0] < 2:
            raise SystemExit("memory_plan: --layers N needs N >= 2 (it compiles N//2 and N "
                             "layers to extrapolate); use --layers 1,2")
        vals = (vals[0] // 2, vals[0])
    if len(vals) != 2 or not 1 <= vals[0] < vals[1]:
        raise SystemExit(f"memory_plan: --layers A,B needs 1 <= A < B, got {text!r}")
    return vals


def reexec_with_devices(n: int, argv) -> int:
    """Run this module again with n fake CPU devices (the flag must be set before JAX starts)."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env[CHILD_ENV] = str(n)
    return subprocess.call([sys.executable, "-m", "experiments.memory_plan", *argv], env=env)


# ---------------------------------------------------------------------------- shapes and config


def resolve_model_config(c, shape_arg: str):
    """(ModelConfig, source description) for config ``c`` (see the module docstring)."""
    from jaxgrpo.models import default_model_path, load_config
    from jaxgrpo.models.config import ModelConfig

    def shape_file(name):
        if os.path.isfile(name):
            return name
        path = os.path.join(SHAPES_DIR, f"{name.lower()}.json")
        if not os.path.isfile(path):
            known = sorted(f[:-5] for f in os.listdir(SHAPES_DIR) if f.endswith(".json"))
            raise SystemExit(f"memory_plan: --shape {name!r} is neither a file nor one of the "
                             f"shipped shapes {known} (experiments/configs/shapes/)")
        return path

    if shape_arg:
        path = shape_file(shape_arg)
        cfg = ModelConfig.from_json_file(path)
        note = f"shape from {path} (--shape; config.model.path not read)"
    else:
        path = c.model.path or default_model_path()
        if os.path.exists(path):
            cfg, note = load_config(path), f"shape from config.model.path={path}"
        else:
            guess = os.path.join(SHAPES_DIR, os.path.basename(path.rstrip("/")).lower() + ".json")
            if not os.path.isfile(guess):
                raise SystemExit(
                    f"memory_plan: config.model.path={path!r} does not exist and no shipped "
                    f"shape is named {os.path.basename(path)!r}; pass --shape NAME|FILE")
            cfg = ModelConfig.from_json_file(guess)
            note = (f"NOTE: config.model.path={path!r} does not exist; using the shipped shape "
                    f"{os.path.relpath(guess)}")
    if c.model.random_init_layers > 0:  # as jaxgrpo.loop.load_policy builds it
        h = c.model.random_init_hidden
        cfg = dataclasses.replace(cfg, hidden_size=h, intermediate_size=2 * h,
                                  num_hidden_layers=c.model.random_init_layers,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=h // 4)
        note += f"; random_init_layers={c.model.random_init_layers}, hidden={h}"
    return cfg, note


def _as_dtype(name, value):
    import jax.numpy as jnp
    if name.endswith("dtype") and isinstance(value, str):
        return jnp.dtype(value)
    return value


def model_factory(c, cfg):
    """(factory, description): ``factory(num_layers)`` builds the Decoder as configured.

    ``config.model`` keys that name a ``Decoder`` constructor argument or a ``ModelConfig`` field
    are passed through (so new knobs such as a remat policy reach the model without this script
    knowing them); the others are listed as not used by the model constructor.
    """
    from flax import nnx
    from jaxgrpo.models import Decoder
    from jaxgrpo.models.policy import configure_runtime

    loader_keys = {"path", "random_init_layers", "random_init_hidden"}
    runtime_keys = {"remat", "attention", "attention_block"}  # configure_runtime, as the run does
    ctor = set(inspect.signature(Decoder.__init__).parameters) - {"self", "cfg", "rngs"}
    fields = {f.name for f in dataclasses.fields(cfg)}
    kwargs, overrides, unused = {}, {}, []
    for key in c.model.keys():
        if key in loader_keys:
            continue
        value = c.model[key]
        if key in runtime_keys:
            continue
        if key in ctor:
            kwargs[key] = _as_dtype(key, value)
        elif key in fields:
            overrides[key] = value
        else:
            unused.append(key)
    cfg = dataclasses.replace(cfg, **overrides)

    def factory(layers):
        lcfg = dataclasses.replace(cfg, num_hidden_layers=layers)
        return lambda: configure_runtime(Decoder(lcfg, rngs=nnx.Rngs(c.seed), **kwargs), c)

    desc = (f"Decoder kwargs from config.model: {sorted(kwargs)}; runtime (as the run sets "
            f"them): remat={c.model.remat}, attention={c.model.attention} (block "
            f"{c.model.attention_block}); ModelConfig fields: "
            f"{sorted(overrides)}; config.model keys not used by the constructor: {unused}")
    return cfg, factory, desc


def sampling_config(c, cfg):
    """The ``SamplingConfig`` the training step builds (``SamplingConfig.from_config``: the
    config's sampling keys, ``train.logits_chunk`` as the prompt log-prob chunk, the prompt
    log-prob pass only when the advantage chain reads it). The decode loop is the scanned stack,
    as ``sampling.unroll_layers="auto"`` runs it on a GPU / TPU: the plan is traced on the CPU
    backend, where "auto" would unroll it."""
    import dataclasses

    from jaxgrpo.sampling import SamplingConfig
    from jaxgrpo.step import rollout_needs

    scfg = SamplingConfig.from_config(
        c.sampling, eos_token_ids=tuple(cfg.eos_token_ids) or (0,),
        pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0,
        return_prompt_logprobs="prompt_logprobs" in rollout_needs(c),
        prompt_logprobs_chunk=c.train.logits_chunk or None)
    if scfg.unroll_layers is None:
        scfg = dataclasses.replace(scfg, unroll_layers=False)
    return scfg


# ------------------------------------------------------------------------------ abstract args


def _bytes_per_device(tree) -> int:
    """Sum over leaves of one device's shard (a ShapeDtypeStruct with a NamedSharding)."""
    import jax
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def _with_shardings(tree, shardings):
    import jax
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        tree, shardings)


def _field_shardings(value, mesh, notes, name):
    """Rules for a pytree whose paths the partition rules match; else replicated (noted)."""
    import jax
    from jaxgrpo import sharding as shd
    if value is None:
        return None
    try:
        return shd.state_shardings(value, mesh)
    except ValueError:
        if any(getattr(x, "ndim", 0) for x in jax.tree.leaves(value)):
            notes.append(f"TrainState.{name}: no partition rule matches; replicated")
        return jax.tree.map(lambda _: shd.replicated(mesh), value)


def abstract_update_args(c, factory, mesh, group_size):
    """(state, rollout, ref_params, graphdef, rest, tx, notes): ShapeDtypeStructs with
    NamedShardings on ``mesh``, the arguments of ``update`` as ``jaxgrpo.step`` calls it (the
    advantages are computed inside the update, from the rollout's extras for the chain)."""
    import jax
    import numpy as np
    from flax import nnx
    from jaxgrpo import train as train_lib
    from jaxgrpo.micro_batch import abstract_rollout

    abstract = nnx.eval_shape(factory)
    graphdef, params, _ = train_lib.split_model(abstract)
    # Non-trainable variables (RoPE frequencies) are constants of the update: real values, small.
    # Under jit only the returned variables are computed; the parameter init is dead code.
    rest = jax.jit(lambda: train_lib.split_model(factory())[2])()
    rest = jax.tree.map(np.asarray, rest)
    tx = train_lib.build_optimizer(c)
    state = jax.eval_shape(lambda p: train_lib.init_train_state(p, tx, c.seed), params)
    notes = []
    shardings = {f.name: _field_shardings(getattr(state, f.name), mesh, notes, f.name)
                 for f in dataclasses.fields(state)}
    state = state.replace(**{k: _with_shardings(getattr(state, k), v)
                             for k, v in shardings.items() if v is not None})
    ref = state.params if c.loss.beta > 0 else None

    # The rollout the step assembles for this chain, as the Trainer's micro-batch choice
    # builds it (full widths, the chain's extras, prompts over data x fsdp when they divide).
    try:
        rollout = abstract_rollout(c, mesh, abstract.config.hidden_size)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"memory_plan: config.embedding.encoder_path: cannot read the "
                         f"encoder's hidden_size ({e!r})") from None
    assert rollout.rewards.shape[1] == group_size, (rollout.rewards.shape, group_size)
    return state, rollout, ref, graphdef, rest, tx, notes


def abstract_sampler_args(c, state, rest, mesh):
    """(model_state, prompt_tokens, prompt_mask, key) as the host loop passes them."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jaxgrpo import sharding as shd

    rep = shd.replicated(mesh)
    rest_abs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), rest)
    model_state = nnx.merge_state(state.params, rest_abs)
    p, tp = c.train.prompts_per_step, c.data.max_prompt_tokens
    n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    bs = shd.batch_sharding(mesh) if p % n_batch == 0 else rep
    key = jax.eval_shape(lambda: jax.random.key(0))
    return (model_state, jax.ShapeDtypeStruct((p, tp), jnp.int32, sharding=bs),
            jax.ShapeDtypeStruct((p, tp), jnp.bool_, sharding=bs),
            jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))


# ----------------------------------------------------------------------------------- compiling


_HBM_RX = re.compile(r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def compile_memory(fn, args, mesh):
    """Lower + compile; {'argument','output','alias','temp','code' bytes, 'seconds', 'fits'}.

    An XLA:TPU out-of-memory refusal is returned as ``fits=False`` with the temporaries and the
    HBM the compiler reported, in bytes, and the error text. Its "G" is 2**30 bytes: a
    program with 121.1e9 bytes of temporaries was refused as "(112.94G)".
    """
    import jax

    t0 = time.perf_counter()
    # Traced under the mesh, as the run's Trainer.train traces (jax.set_mesh): the decoder's
    # activation sharding constraints and the splash kernel's shard_map read it. The abstract
    # mesh only: a TPU topology's devices cannot hold the concrete constants (splash's mask
    # tables) that jax.set_mesh would place on them.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        lowered = fn.lower(*args)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA raises one runtime error type for everything
        msg = str(e)
        m = _HBM_RX.search(msg)
        if m is None:
            raise
        scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
        return dict(fits=False, temp=float(m.group(1)) * scale[m.group(2)],
                    hbm=float(m.group(3)) * scale[m.group(4)], argument=None, output=None,
                    alias=None, code=None, lower_s=t1 - t0, compile_s=time.perf_counter() - t1,
                    error=msg.strip().splitlines()[0][:300])
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    return dict(fits=True, argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes,
                alias=ma.alias_size_in_bytes, temp=ma.temp_size_in_bytes,
                code=ma.generated_code_size_in_bytes, lower_s=t1 - t0, compile_s=t2 - t1)


def extrapolate(points, depth):
    """Linear in the number of layers through two (layers, bytes) points, evaluated at depth.

    Bytes that fall with depth (XLA's buffer assignment reuses one depth-independent peak, e.g.
    full-vocabulary logits, differently at each depth) are never extrapolated downwards: the
    slope is floored at 0, so the estimate is the larger measured value, not a negative size."""
    (l0, y0), (l1, y1) = points
    slope = max((y1 - y0) / (l1 - l0), 0.0)
    return max(y0, y1) + slope * (depth - l1), slope


def gb(x):
    """Bytes as GB (1e9) for the table; small sizes in MB / kB so tiny configs stay readable."""
    if x is None:
        return "     n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(x) >= 0.1 * scale:
            return f"{x / scale:8.3f} {unit}"
    return f"{x:8.0f} B"


# ------------------------------------------------------------------------------------ the plan


def plan_backend(c, cfg, factory, mesh, backend, depths, full_depth, group, scfg, skip_sampler,
                 skip_update=False):
    """Compile update (and sampler) at each depth on ``mesh``; print the table; return results."""
    from jaxgrpo.sampling import make_sampler
    from jaxgrpo.train import make_update_fn

    d, f, t = (mesh.shape[a] for a in ("data", "fsdp", "tensor"))
    n_dev = d * f * t
    res = {"backend": backend, "mesh": [d, f, t], "depths": list(depths), "update": {},
           "sampler": {}}
    full = {}
    for layers in sorted(set(depths) | {full_depth}):
        compiled_here = layers in depths
        state, ro, ref, graphdef, rest, tx, notes = abstract_update_args(
            c, factory(layers), mesh, group)
        sizes = dict(params=_bytes_per_device(state.params),
                     opt_state=_bytes_per_device(state.opt_state),
                     ref_params=_bytes_per_device(ref) if ref is not None else 0,
                     rollout=_bytes_per_device(ro),
                     other_state=_bytes_per_device([getattr(state, k.name) for k in
                                                    dataclasses.fields(state)
                                                    if k.name not in ("params", "opt_state")]))
        sizes["arguments"] = sum(sizes.values())
        sam_args = abstract_sampler_args(c, state, rest, mesh)
        sizes["sampler_arguments"] = _bytes_per_device(sam_args)
        full[layers] = sizes
        if not compiled_here:
            continue
        for note in notes if layers == min(depths) else ():
            print(f"  note: {note}")
        if not skip_update:
            print(f"  [{backend}] compiling update at {layers} layer(s) ...", flush=True)
            update = make_update_fn(c, graphdef, rest, tx)
            res["update"][layers] = compile_memory(update, (state, ro, ref), mesh)
            r = res["update"][layers]
            print(f"  [{backend}]   lowered in {r['lower_s']:.1f} s, compiled in "
                  f"{r['compile_s']:.1f} s" + ("" if r["fits"] else
                                                 f": DOES NOT FIT: {r['error']}"), flush=True)
        if not skip_sampler:
            print(f"  [{backend}] compiling sampler at {layers} layer(s) ...", flush=True)
            sampler = make_sampler(graphdef, scfg)
            res["sampler"][layers] = compile_memory(sampler, sam_args, mesh)
            r = res["sampler"][layers]
            print(f"  [{backend}]   lowered in {r['lower_s']:.1f} s, compiled in "
                  f"{r['compile_s']:.1f} s" + ("" if r["fits"] else
                                                 f": DOES NOT FIT: {r['error']}"), flush=True)
    res["shapes"] = {k: v for k, v in full.items()}

    # ---- the table
    tp, tc = c.data.max_prompt_tokens, c.sampling.max_new_tokens
    p = c.train.prompts_per_step
    n = p * group
    n_mb, n_acc = c.train.num_minibatches, c.train.grad_accum
    micro = n // (n_mb * n_acc)
    rows_dev = micro / (d * f)
    vocab = cfg.vocab_size
    itemsize = {"bfloat16": 2, "float32": 4}.get(str(c.model.dtype), 4)
    chunk = c.train.logits_chunk if "logits_chunk" in c.train else 0
    logit_t = min(chunk, tc) if chunk else tc
    kv_slots = tp + tc
    rows_s = p * group
    kv_full = (2 * full_depth * rows_s * cfg.num_key_value_heads * kv_slots * cfg.head_dim
               * itemsize)
    kv_dev = kv_full / (d * f) if rows_s % (d * f) == 0 else kv_full
    kv_dev /= t if cfg.num_key_value_heads % t == 0 else 1
    s = full[full_depth]
    print(f"\n== per device, {backend}, mesh data={d} fsdp={f} tensor={t} ({n_dev} devices), "
          f"{full_depth} layers ==")
    print(f"  batch: {n} completions of {tp}+{tc} tokens; micro-batch {micro} rows "
          f"({rows_dev:g} per device), train.num_minibatches={n_mb}, train.grad_accum={n_acc}")
    print(f"  params             {gb(s['params'])}   (from the shapes and partition rules)")
    print(f"  optimizer state    {gb(s['opt_state'])}")
    print(f"  reference params   {gb(s['ref_params'])}   (loss.beta={c.loss.beta})")
    print(f"  gradients          {gb(s['params'])}   (estimate: one accumulator laid out like "
          f"the params)")
    print(f"  logits             {gb(rows_dev * logit_t * vocab * 4)}   (estimate: f32 "
          f"[{rows_dev:g} rows/device, {logit_t} tokens, {vocab}] of one micro-batch"
          + (f", train.logits_chunk={chunk}" if chunk else ", full vocabulary, unchunked") + ")")
    acts = rows_dev * (tp + tc) * cfg.hidden_size * itemsize * full_depth
    kept = (f"[{rows_dev:g} rows/device, {tp + tc} tokens, {cfg.hidden_size}] x {full_depth} "
            f"layers in {c.model.dtype}")
    print(f"  activations        {gb(acts)}   "
          + (f"(estimate: with model.remat='full' the backward keeps each layer's input, {kept}"
             if c.model.remat == "full" else
             f"(estimate, a lower bound: each layer's input, {kept}; "
             f"model.remat={c.model.remat!r} also keeps intermediates")
          + "; part of the compiled temporaries below)")
    print(f"  rollout inputs     {gb(s['rollout'])}")
    print(f"  KV cache (sampler) {gb(kv_dev)}   (estimate: {rows_s} rows x {kv_slots} slots x "
          f"{full_depth} layers, K+V in {c.model.dtype}, rows split over data x fsdp)")
    out = {}
    for what in ("update", "sampler"):
        rs = res[what]
        if not rs:
            continue
        arg_key = "arguments" if what == "update" else "sampler_arguments"
        print(f"  -- {what} (compiled; memory_analysis)")
        for layers in sorted(rs):
            r = rs[layers]
            peak = (r["argument"] + r["temp"]) if r["fits"] else full[layers][arg_key] + r["temp"]
            print(f"    measured at {layers:3d} layer(s): arguments {gb(r['argument'])} "
                  f"(shapes: {gb(full[layers][arg_key])}), temporaries "
                  f"{gb(r['temp'])}{'' if r['fits'] else ' (reported by the refusal)'}, "
                  f"outputs {gb(r['output'])} (aliased {gb(r['alias'])}); "
                  f"peak {gb(peak)}" + ("" if r["fits"] else
                                        f"  DOES NOT FIT in {gb(r['hbm'])} of HBM"))
            rs[layers]["peak"] = peak
        if len(rs) == 2 and full_depth not in rs:
            temp, slope = extrapolate([(k, rs[k]["temp"]) for k in sorted(rs)], full_depth)
            # Arguments grow by one layer's parameters per layer: linear, so exact (TPU pads
            # small arrays to tiles, which the shapes do not show); the shapes' count if the
            # compiler refused the program before reporting them.
            if all(rs[k]["argument"] is not None for k in rs):
                args, _ = extrapolate([(k, rs[k]["argument"]) for k in sorted(rs)], full_depth)
            else:
                args = full[full_depth][arg_key]
            peak = args + temp
            print(f"    EXTRAPOLATED to {full_depth} layers (linear in layers from "
                  f"{sorted(rs)}): temporaries {gb(temp)} ({slope / GB:.3f} GB/layer), "
                  f"arguments {gb(args)} (shapes: {gb(full[full_depth][arg_key])}), "
                  f"peak {gb(peak)}")
            out[what] = dict(peak=peak, temp=temp, arguments=args, extrapolated=True,
                             fits=all(r["fits"] for r in rs.values()))
        else:
            layers = max(rs)
            out[what] = dict(peak=rs[layers]["peak"], temp=rs[layers]["temp"],
                             arguments=rs[layers]["argument"], extrapolated=False,
                             fits=rs[layers]["fits"], layers=layers)
    res["result"] = out
    return res


# The paper's own figure for its run (arXiv 2505.09655; experiments/configs/dra_paper.py).
PAPER_RUNS = {"dra_dr_grpo_paper": ("a100-40gb", 4, 12.5),
              "dra_grpo_paper": ("a100-40gb", 4, 12.5)}


def _sampler_cost_programs(c, graphdef, rows_prompts: int, group: int):
    """(prefill, decode) jitted functions of the sampler's two programs for ``rows_prompts``
    prompts x ``group``: the prompt pass into a Tp + Tc cache, and ONE decode step of
    P x G rows attending over a cache of Tp + Tc // 2 slots (the mean fill)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jaxgrpo.models.decoder import init_cache, positions_from_mask

    tp, tc = c.data.max_prompt_tokens, c.sampling.max_new_tokens

    def prefill(state, tokens, mask):
        model = nnx.merge(graphdef, state)
        cache = init_cache(model.config, rows_prompts, tp + tc, model.dtype)
        key_mask = jnp.concatenate([mask, jnp.ones((rows_prompts, tc), bool)], axis=1)
        h, cache = model.hidden_states(tokens, attention_mask=key_mask,
                                       positions=positions_from_mask(mask), cache=cache,
                                       cache_index=0)
        return model.logits_from_hidden(h[:, -1]), cache

    def decode(state, tok, cache, key_mask, pos, index):
        model = nnx.merge(graphdef, state)
        return model(tok, attention_mask=key_mask, positions=pos, cache=cache, cache_index=index)

    return jax.jit(prefill), jax.jit(decode)


def cost_plan(c, factory, mesh, group, full_depth):
    """roofline.StepCost of config ``c``: update, prefill and decode step (flops, bytes) per
    device, from compiles at 1 and 2 layers with unrolled scans and naive attention."""
    import jax
    import jax.numpy as jnp
    from experiments import roofline
    from jaxgrpo.models.decoder import init_cache
    from jaxgrpo.train import make_update_fn

    d, f = mesh.shape["data"], mesh.shape["fsdp"]
    p = max(1, c.train.prompts_per_step // (d * f))
    tp, tc = c.data.max_prompt_tokens, c.sampling.max_new_tokens
    s_mean = tp + tc // 2
    saved = c.model.attention
    c.model.attention = "naive"  # no loop over key blocks: every score counted
    points = {"update": [], "prefill": [], "decode": []}
    try:
        for layers in (1, 2):
            with roofline.unrolled_scans():
                state, ro, ref, graphdef, rest, tx, _ = abstract_update_args(
                    c, factory(layers), mesh, group)
                update = make_update_fn(c, graphdef, rest, tx)
                with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
                    points["update"].append(
                        (layers, roofline.cost_of(update.lower(state, ro, ref).compile())))
                strip = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
                from flax import nnx
                mstate = nnx.merge_state(strip(state.params), rest)
                prefill, decode = _sampler_cost_programs(c, graphdef, p, group)
                sds = jax.ShapeDtypeStruct
                points["prefill"].append((layers, roofline.cost_of(prefill.lower(
                    mstate, sds((p, tp), jnp.int32), sds((p, tp), jnp.bool_)).compile())))
                b = p * group
                cache = jax.eval_shape(lambda: init_cache(
                    nnx.eval_shape(factory(layers)).config, b, s_mean,
                    jnp.dtype(c.model.dtype)))
                points["decode"].append((layers, roofline.cost_of(decode.lower(
                    mstate, sds((b, 1), jnp.int32), cache, sds((b, s_mean), jnp.bool_),
                    sds((b, 1), jnp.int32), sds((), jnp.int32)).compile())))
    finally:
        c.model.attention = saved
    ext = {k: roofline.linear_in_layers(v, full_depth) for k, v in points.items()}
    return roofline.StepCost(update=ext["update"], prefill=ext["prefill"],
                             decode=ext["decode"], new_tokens=tc)


def print_cost_plan(c, cost, devices, n_dev, price):
    """The time-and-cost lines for each of ``devices`` (see the module docstring)."""
    from experiments import roofline

    print(f"\n== time-and-cost plan (roofline of XLA:CPU's cost analysis; unvalidated), {n_dev} device(s), "
          f"{c.steps} steps ==")
    print(f"  per device: update {cost.update[0]:.4g} FLOP / {cost.update[1]:.4g} B; prefill "
          f"{cost.prefill[0]:.4g} FLOP / {cost.prefill[1]:.4g} B; decode step "
          f"{cost.decode[0]:.4g} FLOP / {cost.decode[1]:.4g} B (cost_analysis, extrapolated "
          f"from 1 and 2 layers)")
    paper = PAPER_RUNS.get(c.name)
    for name in devices:
        est = roofline.run_estimate(cost, roofline.device(name), steps=c.steps, devices=n_dev,
                                    price_per_device_hour=price)
        lines = list(roofline.format_estimate(name, est, cost, steps=c.steps, price=price))
        for line in lines[:-2]:
            print(line)
        if paper and paper[0] == name and paper[1] == n_dev:
            print(f"    the paper: {paper[2]} h on {paper[1]} x {paper[0]} (estimate "
                  f"{est['run_hours']:.4g} h: a roofline without the host, rewards and "
                  "communication)")
        for line in lines[-2:]:
            print(line)


def make_tpu_mesh(name: str, sizes):
    from jax.experimental import topologies
    from jaxgrpo import sharding as shd

    if importlib.util.find_spec("libtpu") is None:
        raise SystemExit("memory_plan: --tpu needs the libtpu wheel (no TPU attached is fine): "
                         "pip install libtpu==0.0.42.1 (the version that matches jax 0.10.2)")
    topo_name, chips = TPU_TYPES.get(name, (name, None))
    m = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)+)", topo_name)
    if m is None:
        raise SystemExit(f"memory_plan: --tpu {name!r} is not one of {sorted(TPU_TYPES)} or a "
                         f"topology name like v5:2x2x2")
    bounds = tuple(int(x) for x in m.group(2).split("x"))
    topo = topologies.get_topology_desc(platform="tpu", topology_name=topo_name,
                                        chip_config_name="default",
                                        chips_per_host_bounds=bounds, num_slices=1)
    devices = list(topo.devices)
    if math.prod(sizes) != len(devices):
        raise SystemExit(f"memory_plan: --mesh {','.join(map(str, sizes))} has "
                         f"{math.prod(sizes)} devices but --tpu {name} ({topo_name}) has "
                         f"{len(devices)} chips")
    return shd.make_mesh(*sizes, devices=devices), f"XLA:TPU {name} ({topo_name}, " \
                                                   f"{devices[0].device_kind})"


def child_main(argv):
    args, rest = build_parser().parse_known_args(argv)
    sizes = parse_mesh(args.mesh)
    depths = parse_layers(args.layers)
    bad = [a for a in rest if not a.startswith("--config")]
    if bad:
        raise SystemExit(f"memory_plan: unexpected arguments {bad}")

    import jax

    from experiments.run import parse_config
    from jaxgrpo import sharding as shd
    from jaxgrpo.experiment import validate

    # inputs=False: the plan reads no data and builds the model from shapes (model.path may be
    # a path on the cluster, or absent: the shipped shape is used).
    c = parse_config(["memory_plan", *([f"--config={args.config}"] if args.config else []),
                      *rest], inputs=False)
    if c.lora.rank > 0:
        raise SystemExit("memory_plan: config.lora.rank > 0 is not planned (the plan lays out a "
                         "full-parameter TrainState); plan with --config.lora.rank=0 for an upper "
                         "bound of the update's memory")
    if c.model.attention == "cudnn":
        raise SystemExit("memory_plan: config.model.attention='cudnn' compiles for a CUDA GPU "
                         "only, not on these fake CPU / TPU devices; plan with "
                         "--config.model.attention=blockwise (flash attention in XLA: no [T, S] "
                         "scores either)")
    group = c.sampling.num_generations + (1 if c.anchors.enabled else 0)
    n = c.train.prompts_per_step * group
    d, f, t = sizes
    if args.rows_per_device:
        micro = args.rows_per_device * d * f
        if n % (c.train.num_minibatches * micro):
            raise SystemExit(
                f"memory_plan: --rows-per-device {args.rows_per_device} on data x fsdp = {d * f} "
                f"devices makes micro-batches of {micro} rows, which do not divide the "
                f"{n} completions per step (train.prompts_per_step * G) into "
                f"train.num_minibatches={c.train.num_minibatches}")
        c.train.grad_accum = n // (c.train.num_minibatches * micro)
        try:
            validate(c)
        except ValueError as e:
            raise SystemExit(f"config error: {e}")
    elif c.train.grad_accum == 0:
        # auto is chosen by the Trainer on the device; the plan compiles one given count
        print("  note: config.train.grad_accum=0 (auto, chosen on the device when training "
              "starts): planning 1 micro-batch per minibatch; --rows-per-device plans another")
        c.train.grad_accum = 1
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = d, f, t

    cfg, shape_note = resolve_model_config(c, args.shape)
    cfg, factory, model_note = model_factory(c, cfg)
    full_depth = cfg.num_hidden_layers
    if depths and depths[1] >= full_depth:
        depths = ()
    compile_depths = depths or (full_depth,)
    scfg = sampling_config(c, cfg)
    print(f"memory plan: config {c.name}, {shape_note}")
    print(f"  model: {cfg.model_type}, {full_depth} layers, hidden {cfg.hidden_size}, heads "
          f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} x {cfg.head_dim}, intermediate "
          f"{cfg.intermediate_size}, vocab {cfg.vocab_size}, tied={cfg.tie_word_embeddings}, "
          f"dtype {c.model.dtype}")
    print(f"  {model_note}")
    print(f"  sampler: {scfg}")
    print(f"  compiling at {list(compile_depths)} layer(s)"
          + (f", extrapolating to {full_depth}" if depths else ""))

    results = []
    if not args.skip_cpu:
        mesh = shd.make_mesh(d, f, t)
        results.append(plan_backend(c, cfg, factory, mesh, f"XLA:CPU ({jax.device_count()} fake "
                                    "devices)", compile_depths, full_depth, group, scfg,
                                    args.skip_sampler, args.skip_update))
    if args.tpu:
        mesh, label = make_tpu_mesh(args.tpu, sizes)
        results.append(plan_backend(c, cfg, factory, mesh, label, compile_depths, full_depth,
                                    group, scfg, args.skip_sampler, args.skip_update))
    if not results:
        raise SystemExit("memory_plan: --skip-cpu without --tpu compiles nothing")
    if args.device:
        from experiments import roofline
        try:
            names = [roofline.device(n).name for n in args.device]
        except ValueError as e:
            raise SystemExit(f"memory_plan: --device: {e}")
        cost = cost_plan(c, factory, shd.make_mesh(d, f, t), group, full_depth)
        print_cost_plan(c, cost, names, d * f * t, args.price)
        results[-1]["cost_plan"] = dataclasses.asdict(cost)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    final = results[-1]
    if args.skip_update:
        return
    u = final["result"]["update"]
    what = ("extrapolated to %d layers" % full_depth if u["extrapolated"]
            else "measured at %d layers" % u["layers"])
    # A refused TPU compile reports no memory_analysis: its arguments come from the shapes, its
    # temporaries from the compiler's message (as printed in the table).
    if u["arguments"] is not None:
        print(f"\nupdate.argument_bytes={int(u['arguments'])}")
    if u["temp"] is not None:
        print(f"update.temp_bytes={int(u['temp'])}")
    print(f"# peak_gb_per_device: update arguments + temporaries, {final['backend']}, {what}"
          + ("" if u["fits"] else ", DOES NOT FIT (the compiler refused it)"))
    print(f"peak_gb_per_device={u['peak'] / GB:.6g}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _ = build_parser().parse_known_args(argv)
    n = math.prod(parse_mesh(args.mesh))
    parse_layers(args.layers)
    if os.environ.get(CHILD_ENV) != str(n):
        if "jax" in sys.modules:
            raise SystemExit("memory_plan: call it as `python -m experiments.memory_plan` (JAX "
                             "must start after the fake-device flag is set)")
        sys.exit(reexec_with_devices(n, argv))
    child_main(argv)
