#!/usr/bin/env bash
# What int8 (ONNX Runtime) costs a *trained* plain cross-encoder: train one alone on SciFact's training
# lists, re-rank BM25's top-20 of SciFact test in PyTorch fp32, bf16 and ONNX int8, and score the runs.
#   bash benchmarks/rerank_int8_quality.sh OUT [LISTS]
# LISTS: training lists (default: mined here from BM25's top-20, `tandem mine`-style via `tandem train --run`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
out=${1:?usage: rerank_int8_quality.sh OUT [LISTS]}
mkdir -p "$out"
tandem() { .venv/bin/tandem "$@"; }
[ -f "$out/bm25-train.trec" ] || tandem bm25 --data scifact --split train --k 20 --out "$out/bm25-train.trec"
[ -f "$out/bm25-test.trec" ] || tandem bm25 --data scifact --split test --k 100 --out "$out/bm25-test.trec"
cat > "$out/ce.yaml" <<'YAML'
reranker_arch: cross
max_steps: 250
batch_size: 8
list_size: 4
reranker_max_length: 160
lr_reranker: 5.0e-5
YAML
if [ ! -f "$out/ce/reranker/tandem_reranker.json" ]; then
  if [ -n "${2:-}" ]; then src=(--lists "$2"); else src=(--run "$out/bm25-train.trec" --top-n 20); fi
  tandem train --data scifact "${src[@]}" --mode reranker --config "$out/ce.yaml" --out "$out/ce" --no-progress
fi
for b in fp32 bf16 onnx-int8; do
  if [ "$b" = onnx-int8 ]; then opts=(--backend onnx-int8); prec=fp32; else opts=(); prec=$b; fi
  tandem --precision "$prec" rerank --run "$out/bm25-test.trec" --data scifact --reranker "$out/ce/reranker" --k 20 \
    --out "$out/rerank-$b.trec" "${opts[@]}" --no-progress
done
tandem evaluate --qrels "$TANDEM_DATA/scifact/qrels/test.tsv" "$out/bm25-test.trec" "$out"/rerank-*.trec
