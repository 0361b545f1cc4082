#!/usr/bin/env bash
# Install tandem with its test dependencies and run the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
. scripts/env.sh
.venv/bin/python -m pytest -q "$@"
