"""The command line every child of ``experiments/race/bench.py`` takes (standard library only:
the children run in their own venvs, as scripts from experiments/race/, and import this by file
name)."""
import argparse


def child_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompts", required=True, help="JSONL with question / answer fields")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-6)
    return ap
