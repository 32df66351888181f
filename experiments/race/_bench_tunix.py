"""Tunix side of ``experiments/race/bench.py``: Tunix's ``GRPOLearner`` (JAX, CPU) on the same
model directory, prompts and settings. Run by the Tunix venv's python (google-tunix 0.1.7, e.g.
/work/tunix-venv/bin/python), never imported by jaxgrpo. Prints one JSON line (``BENCH {...}``)
with the same keys as the TRL child.

    /work/tunix-venv/bin/python experiments/race/_bench_tunix.py --model-dir D --prompts P.jsonl \
        --steps 6 --group 8 --prompts-per-step 4 --new-tokens 128 --lr 1e-6

How it maps onto Tunix:

* Model: Tunix's own ``tunix.models.llama3`` / ``tunix.models.qwen2`` module, weights read by its
  ``params.create_model_from_safe_tensors`` from the HF directory. The Tunix ``ModelConfig`` is
  built by hand from config.json (the presets are fixed sizes; the bench's tiny random Llama is
  none of them). fp32 throughout (``dtype=jnp.float32``). No rematerialisation (Tunix's default
  ``RematConfig.NONE``): with ``remat_config=BLOCK`` or ``DECODER`` (the analogue of jaxgrpo's
  ``model.remat=full`` / TRL's gradient checkpointing) Tunix 0.1.7 + flax 0.12.8 fails in the
  vanilla sampler's first decode step (``flax.errors.TraceContextError: Cannot mutate Param from
  a different trace level``, raised from ``nnx.remat`` in ``tunix/models/llama3/model.py``;
  tried 2026-12-03 at the tiny shape), so the Tunix peer always runs without it.
* Learner: ``RLCluster`` (actor only, rollout engine "vanilla", actor and rollout on one 1x1
  ``(fsdp, tp)`` CPU mesh so they share the weights and no sync is needed) +
  ``GRPOLearner`` / ``GRPOConfig(num_generations=G, num_iterations=1, beta=0)``. beta = 0, so no
  reference model is built or run (as TRL with beta=0). One full batch (4 prompts x G) is one
  optimizer step (mini batch = micro batch = full batch).
* Optimizer: optax ``clip_by_global_norm(1)`` then ``adamw(lr, b1=0.9, b2=0.99, eps=1e-8,
  weight_decay=0)``, constant schedule.
* Sampling: temperature 1, top_p 1, no top_k. Forced length: Tunix has no ``min_new_tokens`` /
  ``ignore_eos``; the vanilla sampler stops a row when it samples one of
  ``RolloutConfig.eos_tokens`` (default: the tokenizer's EOS). We pass ``eos_tokens=[-1]`` (an id
  that can never be sampled), so every row decodes the full ``--new-tokens``; the sampler's
  decode ``while_loop`` then always runs to the end. Caveat: Tunix builds the completion mask as
  ``completion != pad_id`` and the SmolLM2 tokenizer's pad id is its EOS id (2), so a sampled EOS
  token in the middle of a completion would be masked out of the loss (it is still generated and
  timed; with a random model it is a ~1/49152-per-token event).
* Prompts: the chat template applied by the HF tokenizer (``add_generation_prompt=True``), as
  TRL and jaxgrpo do. ``RolloutConfig.max_prompt_length`` is the longest templated prompt rounded
  up to a multiple of 8 (Tunix left-pads every prompt to it).
* Reward: last number in the completion equals the answer (same rule as the TRL child).
* Timing: ``RLCluster.generate`` is wrapped (time in the rollout, incl. detokenization);
  ``RLCluster.update_actor`` is wrapped and blocks on the actor's parameters before recording the
  end of a step (Tunix's trainer dispatches asynchronously). Step 1 runs from the moment the
  learner is built to the end of the first update (so it includes compilation). Extra keys
  besides the TRL child's: ``completion_tokens`` (tokens the rollout returned per step, all rows:
  = tokens_per_step when the forced length holds), ``compiles_per_step`` (jax_log_compiles
  records; after step 1 Tunix compiles one scalar ``jit(equal)`` in step 2, then nothing),
  ``max_prompt_tokens``, ``jax_version``, ``devices``.

Differences from the TRL / jaxgrpo settings that remain: Tunix's GRPO loss defaults are kept
(``loss_agg_mode="sequence-mean-token-mean"``, PPO clip epsilon 0.2); the vanilla sampler uses the
same default PRNG key for every rollout call (``RolloutConfig.seed=None`` -> ``PRNGKey(0)``),
which does not change the amount of work.
"""
import time

T_START = time.perf_counter()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import warnings  # noqa: E402

# Tunix 0.1.7's models read the mesh from `with mesh:` (pxla.thread_resources), which jax 0.10
# flags as deprecated; the warning is noise here.
warnings.filterwarnings("ignore", message=".*`with mesh:` context manager.*")


def tunix_model(model_dir: str, mesh):
    """A Tunix Llama3 / Qwen2 model built from an HF directory's config.json + safetensors."""
    import jax.numpy as jnp

    with open(os.path.join(model_dir, "config.json")) as f:
        hf = json.load(f)
    mt = hf.get("model_type", "llama")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    rope_theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta",
                                                                               10000.0)
    scaling = hf.get("rope_scaling") or {}
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise SystemExit(f"rope_scaling {scaling} is not supported by this bench child")
    common = dict(num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
                  embed_dim=hf["hidden_size"], hidden_dim=hf["intermediate_size"],
                  num_heads=heads, head_dim=head_dim,
                  num_kv_heads=hf.get("num_key_value_heads", heads), rope_theta=rope_theta,
                  norm_eps=hf.get("rms_norm_eps", 1e-6))
    tied = bool(hf.get("tie_word_embeddings", False))
    if mt == "llama":
        from tunix.models.llama3 import model as lib, params as params_lib
        cfg = lib.ModelConfig(**common, weight_tying=tied)
    elif mt == "qwen2":
        from tunix.models.qwen2 import model as lib, params as params_lib
        cfg = lib.ModelConfig(**common, use_tied_embedding=tied)
    else:
        raise SystemExit(f"model_type {mt!r}: this bench child knows llama and qwen2")
    return params_lib.create_model_from_safe_tensors(model_dir, cfg, mesh=mesh,
                                                     dtype=jnp.float32)


def main():
    from _bench_args import child_parser  # experiments/race/ is sys.path[0] for a script

    ap = child_parser()
    a = ap.parse_args()

    import jax
    import numpy as np
    import optax
    import transformers
    from flax import nnx

    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices[:1]).reshape(1, 1), ("fsdp", "tp"))
    tok = transformers.AutoTokenizer.from_pretrained(a.model_dir)
    with mesh:
        model = tunix_model(a.model_dir, mesh)

    rows = [json.loads(line) for line in open(a.prompts)]
    n = a.steps * a.prompts_per_step
    rows = (rows * (n // len(rows) + 1))[:n]
    texts = [tok.apply_chat_template([{"role": "user", "content": r["question"]}],
                                     tokenize=False, add_generation_prompt=True) for r in rows]
    max_prompt = max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts) + 1
    max_prompt = -(-max_prompt // 8) * 8
    p = a.prompts_per_step
    batches = [{"prompts": np.array(texts[i:i + p]),
                "answer": np.array([str(r["answer"]) for r in rows[i:i + p]])}
               for i in range(0, n, p)]

    def last_number_reward(prompts, completions, answer, **_):
        # Same rule as jaxgrpo's `last_number` answer source for integer answers.
        out = []
        for text, gold in zip(completions, answer):
            nums = re.findall(r"-?\d+(?:\.\d+)?", text)
            out.append(1.0 if nums and nums[-1] == str(gold) else 0.0)
        return out

    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(a.lr, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0))
    rollout_cfg = base_rollout.RolloutConfig(
        max_tokens_to_generate=a.new_tokens, temperature=1.0, top_p=1.0, top_k=None,
        max_prompt_length=max_prompt, kv_cache_size=max_prompt + a.new_tokens + 8,
        eos_tokens=[-1])  # never sampled: every completion is full length (see docstring)
    training_cfg = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optimizer, eval_every_n_steps=10**9, max_steps=a.steps,
        pbar_description=None)
    role_to_mesh = {r: mesh for r in (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE,
                                      rl_cluster_lib.Role.ROLLOUT)}
    cluster_cfg = rl_cluster_lib.ClusterConfig(
        role_to_mesh=role_to_mesh, rollout_engine="vanilla", offload_to_cpu=False,
        training_config=training_cfg, rollout_config=rollout_cfg)

    gen_time, step_end = [], []
    cls = rl_cluster_lib.RLCluster
    orig_generate, orig_update = cls.generate, cls.update_actor

    completion_tokens = []  # per rollout call: generated tokens (all rows), checks forced length

    def timed_generate(self, *args, **kw):
        t = time.perf_counter()
        out = orig_generate(self, *args, **kw)
        gen_time.append(time.perf_counter() - t)
        completion_tokens.append(int(sum(len(x) for x in out.tokens)))
        return out

    def timed_update(self, *args, **kw):
        out = orig_update(self, *args, **kw)
        jax.block_until_ready(nnx.state(self.actor_trainer.model, nnx.Param))
        step_end.append(time.perf_counter())
        mark_compiles()
        return out

    cls.generate, cls.update_actor = timed_generate, timed_update

    compiles = []

    class Count:  # jax_log_compiles records, as the jaxgrpo child counts them
        def write(self, msg):
            compiles.append(msg)

        def flush(self):
            pass

    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax").addHandler(logging.StreamHandler(Count()))
    marks = [0]  # compile-log length at each step end

    def mark_compiles():
        marks.append(len(compiles))

    with mesh:
        cluster = cls(actor=model, reference=None, tokenizer=tok, cluster_config=cluster_cfg)
        learner = grpo_learner.GRPOLearner(
            rl_cluster=cluster, reward_fns=[last_number_reward],
            algo_config=grpo_learner.GRPOConfig(num_generations=a.group, num_iterations=1,
                                                beta=0.0, epsilon=0.2))
        t_ready = time.perf_counter()
        learner.train(batches)
    if len(step_end) != a.steps:
        raise SystemExit(f"expected {a.steps} updates, saw {len(step_end)}")
    steps = [step_end[0] - t_ready] + [b - a_ for a_, b in zip(step_end, step_end[1:])]
    n_compiles = [sum("Compiling" in m for m in compiles[b:e]) for b, e in zip(marks, marks[1:])]
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    from importlib.metadata import version
    print("BENCH " + json.dumps({
        "framework": os.environ.get("JAXGRPO_BENCH_LABEL", "tunix"),
        "version": version("google-tunix"),
        "cpu_settings": {k: os.environ.get(k) for k in ("XLA_FLAGS", "GLIBC_TUNABLES")},
        "load_s": t_ready - T_START, "first_step_end_s": step_end[0] - T_START,
        "step_s": steps, "generate_s": gen_time, "peak_rss_gb": rss_gb,
        "tokens_per_step": a.prompts_per_step * a.group * a.new_tokens,
        "completion_tokens": completion_tokens, "compiles_per_step": n_compiles,
        "max_prompt_tokens": max_prompt, "jax_version": jax.__version__,
        "devices": [str(d) for d in devices]}), flush=True)


if __name__ == "__main__":
    main()
