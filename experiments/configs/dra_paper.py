"""DRA-DR.GRPO at paper scale (arXiv 2505.09655, Table 1 setting; METHODS.md §2).

Command (GPU/TPU mesh; local model directory and data file required):
  python -m experiments.run --config experiments/configs/dra_paper.py \
      --config.model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B \
      --config.data.path=/data/open-rs.jsonl
  Add --config.advantage.baseline=grpo --config.loss.agg_mode=seq-mean-token-mean for DRA-GRPO.
Hardware: the paper used 4x A100-40GB for 12.5 h; here data=1, fsdp=all devices.
  Memory (experiments/memory_plan, XLA:TPU ahead-of-time compile under the mesh, 28 layers,
  update arguments + temporaries per device; README "Paper scale"): 17.77 GB on 4 chips (v5p-8)
  with --config.train.grad_accum=4 (3 sequences/device), 13.72 GB on 8 chips (v5p-16) with
  grad_accum=1 (6 sequences/device); with model.remat=none 68.05 GB on 4 chips.
Expected (paper, pass@1): AIME24 36.7, MATH-500 85.2, AMC23 85.0, Minerva 30.5,
  OlympiadBench 53.8, average 58.2 (base model 48.9). Evaluate with
  experiments/tables/dra_table.py. Not run by us: no GPU was available when this was written.
"""
from experiments.configs.common import paper_dra_config


def get_config():
    return paper_dra_config("dra_dr_grpo_paper", baseline="dr_grpo")
