#!/usr/bin/env bash
# Install tandem and run the demo on SciFact (../shared/data/scifact) with the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. scripts/env.sh
.venv/bin/tandem demo --data scifact --out runs/demo "$@"
