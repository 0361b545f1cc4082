#!/usr/bin/env bash
# The CPU experiment protocols of issues 5 and 10 (benchmarks/train_scifact.py, BENCHMARKS.md "Training on
# SciFact"), run on one GPU with every seed, several runs at a time. Same settings as on the CPU (lists of 8,
# 8 lists a step, 128/160 tokens, 40 or 60 steps); on CUDA the trainer runs in bf16 autocast.
#
#   bash benchmarks/gpu_experiments.sh OUT [PARALLEL]
#
# OUT gets results.tgz (each run's result.json, the mining report), log.txt and errors.txt (the stderr tail of
# any failed run; a failed run is retried once). I10="g256-s2 ..." limits the i10 group to those runs,
# I10=none skips it; SPEED=1 first times bf16 against fp32 inference (encode_speed / rerank_speed). Groups:
#   i10: the gated re-ranker warm-up at pair lengths 160 / 256 / 384 (60 steps) and 256 (40 steps),
#        seeds 1-3, re-ranking the top-20 of BM25 and of the zero-shot retriever;
#   i5:  `tandem mine` with the 160-token seed-1 warm-up as denoiser (top-20 denoised, as on the CPU),
#        then joint training on (a) undenoised, (b) denoised-only, (c) hybrid lists, seeds 1-3,
#        and m = 3 / 15 negatives per list for (a) and (c).
set -u
OUT=${1:?usage: gpu_experiments.sh OUT [PARALLEL]}
PAR=${2:-6}
W=${WORK:-/tmp/gx}
mkdir -p "$OUT" "$W"
# training in bf16 autocast (as tandem does on a GPU), inference in fp32 (as on the CPU, and as in the first runs)
export TANDEM_NO_PROGRESS=1 OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false TANDEM_PRECISION=fp32
LOG="$OUT/log.txt"
T="python3 benchmarks/train_scifact.py --cache $W/cache --train-precision bf16"
G="reranker_arch=gated fit_mixing_lists=0"

run() {  # NAME ARGS...: one train_scifact.py run (result in W/NAME/result.json); a failure is retried once
    local name=$1; shift
    echo "$(date +%T) start $name" >> "$LOG"
    $T "$@" --out "$W/$name" > "$W/$name.json" 2> "$W/$name.err"
    local rc=$?
    echo "$(date +%T) end $name rc=$rc" >> "$LOG"
    if [ $rc -ne 0 ]; then
        { echo "== $name rc=$rc"; tail -25 "$W/$name.err"; } >> "$OUT/errors.txt"
        rm -rf "${W:?}/$name"
        $T "$@" --out "$W/$name" > "$W/$name.json" 2> "$W/$name.retry.err"
        rc=$?
        echo "$(date +%T) retried $name rc=$rc" >> "$LOG"
        [ $rc -eq 0 ] || { echo "== $name retry rc=$rc"; tail -25 "$W/$name.retry.err"; } >> "$OUT/errors.txt"
    fi
}
pack() { (cd "$W" && tar czf "$OUT/results.tgz" */result.json mined/*.report.* mine.out speed-*.json 2>/dev/null); }
trap pack EXIT
throttle() { while [ "$(jobs -rp | wc -l)" -ge "$PAR" ]; do sleep 1; done; }

echo "$(date +%T) device: $(python3 -c 'from tandem.utils import device_name; print(device_name())')" >> "$LOG"
if [ "${SPEED:-0}" = 1 ]; then
  python3 benchmarks/encode_speed.py --n 5183 --max-length 256 --batch-size 256 --repeats 3 --backends torch,torch-bf16 \
      --st-bf16 > "$W/speed-encode.json" 2>> "$OUT/errors.txt"
  python3 benchmarks/rerank_speed.py --pairs 2000 --max-length 320 --batch-size 256 --repeats 3 \
      --backends torch,torch-bf16 > "$W/speed-rerank.json" 2>> "$OUT/errors.txt"
  echo "$(date +%T) speed done" >> "$LOG"
fi
# the zero-shot index and top-50 lists, once, before the parallel runs
run g160-s1 --mode reranker --max-steps 60 --seed 1 --rerank-k 20 --rerank-on bm25,zero-shot --set $G

# issue 5 first needs the seed-1 denoiser: mine while the i10 group runs
(
  echo "$(date +%T) start mine" >> "$LOG"
  python3 -m tandem mine --data scifact --out "$W/mined/hybrid.jsonl" --index "$W/cache/zs-index" \
      --top-n 50 --reranker "$W/g160-s1/reranker" --denoise-top 20 > "$W/mine.out" 2>&1
  echo "$(date +%T) end mine rc=$?" >> "$LOG"
  cp "$W/mined/hybrid.report.md" "$W/mined/hybrid.report.json" "$OUT/" 2>/dev/null
) &
MINE=$!

for s in 1 2 3; do
  for spec in "g160 60 160" "g256 60 256" "g384 60 384" "g256x40 40 256"; do
    set -- $spec
    [ "$1-s$s" = g160-s1 ] && continue
    [ -n "${I10:-}" ] && [[ " $I10 " != *" $1-s$s "* ]] && continue
    throttle
    run "$1-s$s" --mode reranker --max-steps "$2" --seed $s --rerank-k 20 --rerank-on bm25,zero-shot \
        --set $G reranker_max_length="$3" &
  done
done
wait $MINE

R="$W/g160-s1/reranker"
H="$W/mined/hybrid.jsonl"
J="--mode joint --max-steps 40 --rerank-k 20 --rerank-on own-retriever --reranker $R"
for s in 1 2 3; do
  throttle; run "ja-s$s" $J --seed $s &
  throttle; run "jb-s$s" $J --seed $s --lists "$H" --set denoised_share=1.0 pseudo_positive_prob=0.0 &
  throttle; run "jc-s$s" $J --seed $s --lists "$H" &
  for m in 3 15; do
    throttle; run "ja-m$m-s$s" $J --seed $s --set list_size=$((m + 1)) &
    throttle; run "jc-m$m-s$s" $J --seed $s --lists "$H" --set list_size=$((m + 1)) &
  done
done
wait
echo "$(date +%T) all done" >> "$LOG"
