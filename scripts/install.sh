#!/usr/bin/env bash
# Create .venv (if missing) and install tandem into it. CPU torch first, so that no
# dependency pulls a CUDA build. Extra arguments are pip extras, e.g. "test".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v -i warning || true
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]" 2>&1 | grep -v -i warning || true
else
  .venv/bin/python -m pip install -q -e . 2>&1 | grep -v -i warning || true
fi
.venv/bin/python -c "import tandem, torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
