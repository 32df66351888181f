"""TRL side of ``experiments/race/bench.py``: TRL's ``GRPOTrainer`` (PyTorch, CPU) on the same
model directory, prompts and settings. Run by the bench's PyTorch venv (experiments/race/
requirements-bench.txt), never imported by jaxgrpo. Prints one JSON line (``BENCH {...}``).

    python experiments/race/_bench_trl.py --model-dir D --prompts P.jsonl --steps 6 --group 8 \
        --prompts-per-step 4 --new-tokens 128 --lr 1e-6
"""
import time

T_START = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402


def main():
    from _bench_args import child_parser  # experiments/race/ is sys.path[0] for a script

    ap = child_parser()
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--grad-accum", type=int, default=1,
                    help="micro-batches per optimizer step (per_device_train_batch_size = "
                         "rows / N, gradient_accumulation_steps = N: one generation, one step)")
    ap.add_argument("--no-gradient-checkpointing", action="store_true",
                    help="turn off TRL's default gradient checkpointing")
    a = ap.parse_args()
    step_rows = a.prompts_per_step * a.group
    if a.grad_accum < 1 or step_rows % a.grad_accum:
        ap.error(f"--grad-accum {a.grad_accum} must divide the {step_rows} rows of a step "
                 "(--prompts-per-step x --group)")

    import torch
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if a.threads:
        torch.set_num_threads(a.threads)
    rows = [json.loads(line) for line in open(a.prompts)]
    n = a.steps * a.prompts_per_step
    rows = (rows * (n // len(rows) + 1))[:n]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}],
                             "answer": str(r["answer"])} for r in rows])

    def last_number_reward(completions, answer, **_):
        # Same rule as jaxgrpo's `last_number` answer source for integer answers.
        out = []
        for c, gold in zip(completions, answer):
            text = c[0]["content"] if isinstance(c, list) else c
            nums = re.findall(r"-?\d+(?:\.\d+)?", text)
            out.append(1.0 if nums and nums[-1] == gold else 0.0)
        return out

    # Time spent inside generate (the rollout); the rest of a step is scoring + the update.
    gen_time = []
    orig_generate = transformers.GenerationMixin.generate

    def timed_generate(self, *args, **kw):
        t = time.perf_counter()
        out = orig_generate(self, *args, **kw)
        gen_time.append(time.perf_counter() - t)
        return out

    transformers.GenerationMixin.generate = timed_generate

    step_end = []

    class Timer(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            step_end.append(time.perf_counter())

    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    cfg = GRPOConfig(
        output_dir=out_dir, max_steps=a.steps,
        per_device_train_batch_size=step_rows // a.grad_accum,
        gradient_accumulation_steps=a.grad_accum,
        gradient_checkpointing=not a.no_gradient_checkpointing,
        num_generations=a.group, max_completion_length=a.new_tokens, learning_rate=a.lr,
        beta=0.0, temperature=1.0, top_p=1.0, top_k=0, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, adam_beta2=0.99,
        generation_kwargs={"min_new_tokens": a.new_tokens}, use_cpu=True, bf16=False,
        fp16=False, logging_steps=1, report_to=[], save_strategy="no", seed=0,
        dataloader_num_workers=0, shuffle_dataset=False)
    trainer = GRPOTrainer(model=a.model_dir, reward_funcs=[last_number_reward], args=cfg,
                          train_dataset=ds, callbacks=[Timer()])
    t_ready = time.perf_counter()
    trainer.train()
    steps = [step_end[0] - t_ready] + [b - a_ for a_, b in zip(step_end, step_end[1:])]
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("BENCH " + json.dumps({
        "framework": os.environ.get("JAXGRPO_BENCH_LABEL", "trl"),
        "version": __import__("trl").__version__,
        "torch_threads": torch.get_num_threads(),
        "load_s": t_ready - T_START, "first_step_end_s": step_end[0] - T_START,
        "step_s": steps, "generate_s": gen_time, "peak_rss_gb": rss_gb,
        "tokens_per_step": a.prompts_per_step * a.group * a.new_tokens,
        "gradient_checkpointing": bool(cfg.gradient_checkpointing),
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps}), flush=True)


if __name__ == "__main__":
    main()
