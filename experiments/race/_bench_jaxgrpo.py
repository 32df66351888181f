"""jaxgrpo side of ``experiments/race/bench.py``: the training step a run executes
(``jaxgrpo.loop.Trainer.train_step`` -> ``jaxgrpo.step``: sample, verify, assemble, update) on the
bench's model directory and prompts, without the held-out evaluations. Prints one JSON line
(``BENCH {...}``) with the per-step wall times and their sampling part.

    python -m experiments.race._bench_jaxgrpo --model-dir D --prompts P.jsonl --steps 6
"""
import os
import time

# Process start, carried across the restart of jaxgrpo.cpu.tune_process (wall clock), so the
# time to first step includes the first process's start-up as the peers' does.
os.environ.setdefault("JAXGRPO_BENCH_T0", repr(time.time()))
T_START = time.perf_counter() - (time.time() - float(os.environ["JAXGRPO_BENCH_T0"]))

import json  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402

from experiments._entry import main_entry  # noqa: E402


def bench_config(a, run_dir: str):
    from jaxgrpo.experiment import base_config

    c = base_config()
    c.name = "bench"
    c.run_dir = run_dir
    c.steps = a.steps
    c.model.path = a.model_dir
    c.data.source = "file"
    c.data.path = c.data.eval_path = a.prompts
    c.data.question_field, c.data.answer_field = "question", "answer"
    c.data.template = "chat"
    c.data.prompt_format = "{question}"
    c.data.eval_size = 1
    c.rewards.answer_sources = "last_number"
    c.sampling.num_generations = a.group
    c.sampling.max_new_tokens = a.new_tokens
    c.sampling.temperature = 1.0
    c.sampling.ignore_eos = True  # as TRL's min_new_tokens: every completion is full length
    c.train.prompts_per_step = a.prompts_per_step
    c.optim.lr = a.lr
    c.loss.beta = 0.0
    c.eval.num_prompts = 1
    c.eval.num_samples = 1
    c.eval.ks = "1"
    c.log.progress = False
    c.log.tensorboard = False
    c.log.samples_every = 0
    c.checkpoint.every = 0
    for kv in a.set or []:
        key, value = kv.split("=", 1)
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = type(node[last])(value) if not isinstance(node[last], bool) else (
            value.lower() in ("1", "true"))
    return c


def main():
    from experiments.race._bench_args import child_parser

    ap = child_parser()
    ap.add_argument("--set", action="append", help="extra config key=value (repeatable)")
    a = ap.parse_args()

    import jax

    from jaxgrpo.cpu import warm_memory
    from jaxgrpo.loop import Trainer

    compiles = []

    class Count:  # jax_log_compiles records: compilation after step 1 would be a bug
        def write(self, msg):
            compiles.append(msg)

    c = bench_config(a, tempfile.mkdtemp(prefix="bench_jaxgrpo_"))
    trainer = Trainer(c)
    t_ready = time.perf_counter()
    import logging
    jax.config.update("jax_log_compiles", True)
    handler = logging.StreamHandler(Count())
    logging.getLogger("jax").addHandler(handler)
    steps, samples, updates, ends, n_compiles, kernel = [], [], [], [], [], []
    try:
        for i in range(a.steps):
            t0 = time.perf_counter()
            k0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            before = len(compiles)
            m = trainer.train_step(i)
            ends.append(time.perf_counter())
            kernel.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - k0)
            steps.append(ends[-1] - t0)
            samples.append(m["time/sample"])
            updates.append(m["time/update"])
            n_compiles.append(sum("Compiling" in s for s in compiles[before:]))
    finally:
        trainer.close()
    p = a.prompts_per_step
    tp = int(trainer.c.data.max_prompt_tokens)
    print("BENCH " + json.dumps({
        "framework": os.environ.get("JAXGRPO_BENCH_LABEL", "jaxgrpo"),
        "version": __import__("jaxgrpo").__version__,
        "overrides": a.set or [],
        "grad_accum": trainer.grad_accum,  # the micro-batches the update ran (auto: chosen)
        "cpu_settings": {**{k: os.environ.get(k) for k in ("XLA_FLAGS", "GLIBC_TUNABLES")},
                         "warm_memory": warm_memory.enabled()},
        "load_s": t_ready - T_START, "first_step_end_s": ends[0] - T_START, "step_s": steps,
        "generate_s": samples, "update_s": updates, "compiles_per_step": n_compiles,
        "kernel_s": kernel,  # the process's system CPU time per step (page supply, mostly)
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "tokens_per_step": p * a.group * a.new_tokens, "max_prompt_tokens": tp,
        "devices": [str(d) for d in jax.devices()]}), flush=True)


if __name__ == "__main__":
    main_entry(main)
