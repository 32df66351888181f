#!/usr/bin/env bash
# The device check's shell entry, for a lent GPU whose image has jax but not all of jaxgrpo's
# requirements:  bash experiments/device_check/run.sh OUT_DIR [--smoke] [--parts a,b] [--cap p=s]
# 1. installs the carried wheels (.device_carry/wheels, made here by fetch_wheels.py) into
#    /tmp/site without touching the image (--no-index --no-deps --target), first on PYTHONPATH;
# 2. runs `python -m experiments.device_check --out OUT_DIR ...`: one process per part, each
#    with its own time cap, the JSON and Markdown table rewritten after every part.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: run.sh OUT_DIR [--smoke] [--parts ...]}; shift
PY=${PYTHON:-python3}
if compgen -G ".device_carry/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .device_carry/wheels/*.whl || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PY" -m experiments.device_check --out "$out" "$@"
