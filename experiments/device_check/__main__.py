"""The device check: everything that needs an accelerator, one command, each part capped.

    python -m experiments.device_check --out DIR [--smoke] [--parts backend,attention,...]
    bash experiments/device_check/run.sh DIR [--smoke]      # installs carried wheels first

Parts (``experiments/device_check/parts.py``): ``backend``, ``attention`` (cudnn / blockwise
against naive, bf16, forward and gradients, paper head shape, 4,096 tokens), ``update3`` and
``update6`` (the paper-shape update in micro-batches of 3 and 6 rows x 4,096 tokens),
``sampler`` (8 prompts x G 6 x 512 prompt tokens), ``default_run`` (the default GRPO run, 15
steps, SmolLM2-135M shape with random weights). Each part runs in its own process with its own
time cap (``--cap part=seconds`` overrides), so a hung or slow part costs only its cap. After
each part DIR/device_check.json (every part's dict) and DIR/device_check.md (one table row per
part) are rewritten, so a run cut off still leaves what finished.

``--smoke``: the same parts at tiny shapes on any backend (the default test suite runs it on
the CPU); parts that need a GPU (cuDNN) report "skipped: no GPU".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from experiments.device_check.parts import CAPS, PARTS, ROOT, SMOKE_CAPS

# Per part, the keys shown in the Markdown table (the JSON has everything).
TABLE_KEYS = {
    "backend": ("device_kind", "memory_bytes_limit", "jax", "jaxlib", "cuda_runtime", "cudnn",
                "flax"),
    "attention": ("rel_err_vs_f32_naive",),
    "update3": ("step_s", "tokens_per_s", "hfu_compiled_flops", "mfu_6NT",
                "peak_bytes_measured", "predicted_peak_bytes", "compile_s"),
    "sampler": ("decode_tokens_per_s", "roofline_tokens_per_s", "fraction_of_roofline",
                "prefill_cudnn_over_blockwise", "runs"),
    "default_run": ("model", "wall_s", "first_step_s", "steps_per_s_after_first"),
}
TABLE_KEYS["update6"] = TABLE_KEYS["update3"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.device_check",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for device_check.json / .md")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (runs on a CPU)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {list(PARTS)}")
    p.add_argument("--cap", action="append", default=[], metavar="PART=SECONDS",
                   help="override one part's time cap")
    p.add_argument("--run-part", default="", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    bad = [x for x in args.parts if x not in PARTS]
    if bad:
        p.error(f"--parts: unknown {bad}; known: {list(PARTS)}")
    caps = dict(SMOKE_CAPS if args.smoke else CAPS)
    for item in args.cap:
        name, _, sec = item.partition("=")
        if name not in PARTS or not sec.replace(".", "", 1).isdigit():
            p.error(f"--cap {item!r}: expected PART=SECONDS with PART in {list(PARTS)}")
        caps[name] = float(sec)
    args.caps = caps
    return args


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def write_report(out_dir: str, results: dict, header: dict) -> None:
    """Rewrite DIR/device_check.json and DIR/device_check.md from ``results`` (part -> dict)."""
    with open(os.path.join(out_dir, "device_check.json"), "w") as f:
        json.dump(dict(header, parts=results), f, indent=2, default=str)
    lines = [f"# Device check ({'smoke' if header['smoke'] else 'full'}, {header['started']})",
             "", "| part | status | seconds | figures |", "| --- | --- | --- | --- |"]
    for name, r in results.items():
        figures = ", ".join(f"{k}={_fmt(r[k])}" for k in TABLE_KEYS.get(name, ()) if k in r)
        status = str(r.get("status", "?")).replace("|", "/").replace("\n", " ")[:200]
        lines.append(f"| {name} | {status} | {r.get('wall_s_part', 0):.1f} | "
                     f"{figures.replace('|', '/')} |")
    with open(os.path.join(out_dir, "device_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def run_part_child(name: str, smoke: bool, out_dir: str) -> None:
    """In the child process: run one part, write DIR/part_<name>.json (a failure too)."""
    try:
        res = PARTS[name](smoke)
    except Exception as e:  # noqa: BLE001 - a part's failure is its result, not the check's
        import traceback
        res = dict(status=f"FAIL: {type(e).__name__}: {str(e)[:300]}",
                   traceback=traceback.format_exc()[-3000:])
    with open(os.path.join(out_dir, f"part_{name}.json"), "w") as f:
        json.dump(res, f, indent=2, default=str)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.out, exist_ok=True)
    if args.run_part:
        run_part_child(args.run_part, args.smoke, args.out)
        return 0
    header = dict(smoke=args.smoke, started=time.strftime("%Y-%m-%d %H:%M:%S"),
                  python=sys.version.split()[0], caps=args.caps)
    results = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, env.get("PYTHONPATH")) if x)
    if args.smoke:
        env.setdefault("JAX_PLATFORMS", "cpu")
        # LLVM at -O0 on the CPU (as the test suite compiles): ~40% less compile time.
        if "xla_backend_optimization_level" not in env.get("XLA_FLAGS", ""):
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                " --xla_backend_optimization_level=0").strip()
    for name in args.parts:
        part_file = os.path.join(args.out, f"part_{name}.json")
        if os.path.exists(part_file):
            os.remove(part_file)
        cmd = [sys.executable, "-m", "experiments.device_check", "--out", args.out,
               "--run-part", name] + (["--smoke"] if args.smoke else [])
        t0 = time.perf_counter()
        print(f"[device_check] {name} (cap {args.caps[name]:g} s) ...", flush=True)
        log_path = os.path.join(args.out, f"part_{name}.log")
        with open(log_path, "w") as log:
            try:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=args.caps[name]).returncode
            except subprocess.TimeoutExpired:
                rc = None
        wall = time.perf_counter() - t0
        if os.path.exists(part_file):
            with open(part_file) as f:
                res = json.load(f)
        elif rc is None:
            res = dict(status=f"FAIL: time cap {args.caps[name]:g} s reached")
        else:
            with open(log_path) as f:
                res = dict(status=f"FAIL: exit {rc} without a result", tail=f.read()[-2000:])
        res["wall_s_part"] = wall
        results[name] = res
        write_report(args.out, results, header)
        print(f"[device_check] {name}: {res['status']} ({wall:.1f} s)", flush=True)
    with open(os.path.join(args.out, "device_check.md")) as f:
        print(f.read())
    return 0 if all(str(r.get("status", "")).startswith(("ok", "skipped")) for r in
                    results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
