#!/usr/bin/env bash
# One lent GPU, one call: the gpu-marked tests, encoding and re-ranking speed against
# sentence-transformers on the same card, then the full-size recipe (tandem/configs/full-gpu.yaml)
# on SciFact under a time limit. Results go to OUT_DIR (a few files: see the end).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [RECIPE_SECONDS=330]
#
# Needs tandem's dependencies and $TANDEM_DATA/scifact. A recipe cut by the limit leaves its finished
# stages (each with its manifest and seconds) in OUT_DIR/recipe.tgz; run it again to resume.
set -u
out=${1:?usage: gpu_suite.sh OUT_DIR [RECIPE_SECONDS]}
budget=${2:-330}
recipe_dir=${RECIPE_DIR:-/tmp/tandem-full-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TANDEM_NO_PROGRESS=1
log="$out/suite.log"
step() { echo "== $(date +%T) $*" | tee -a "$log"; }

step gpu
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv >>"$log" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >>"$log" 2>&1

step "gpu tests"
python3 -m pytest -q -m gpu tests/test_encoder.py tests/test_train.py >>"$log" 2>&1; echo "pytest rc=$?" | tee -a "$log"

step "encode speed (fp32, 256 tokens)"
python3 benchmarks/encode_speed.py --n ${ENCODE_N:-5183} --max-length 256 --batch-size 256 --repeats 3 >"$out/encode.json" 2>>"$log"
step "rerank speed (fp32, 320 tokens)"
python3 benchmarks/rerank_speed.py --pairs ${RERANK_PAIRS:-2000} --max-length 320 --batch-size 256 --repeats 3 --backends torch \
    >"$out/rerank.json" 2>>"$log"

step "recipe full-gpu (limit ${budget}s)"
timeout "$budget" python3 -m tandem recipe tandem/configs/full-gpu.yaml --out "$recipe_dir" --no-progress \
    >"$out/recipe.log" 2>&1; echo "recipe rc=$?" | tee -a "$log"
# Everything but model weights, indexes and checkpoints: reports, manifests, metrics logs, configs, runs
# (test runs are ~12 MB each before compression).
(cd "$recipe_dir" 2>/dev/null && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' \
    -o -name '*.yaml' -o -name '*.trec' -o -name '*.txt' \) -size -64M -not -path '*/checkpoints/*' -not -name 'ids.txt' \
    -print0 | tar czf "$out/recipe.tgz" --null -T -)
step done
