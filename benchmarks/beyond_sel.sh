#!/bin/bash
# Setting selection without test data (issue 26): calibrate on the first 80% of the WikiText-2
# validation tokens (--calib-holdout), measure perplexity on 4 windows of 2048 of the remaining 20%
# (--ppl wikitext2-heldout).
#   usage: benchmarks/beyond_sel.sh MODEL TAG METHODS [dpq compare flags...]
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=$PWD/src TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DPQ=${DPQ:-/work/main/.venv/bin/dpq}
M=$1; TAG=$2; METHODS=$3; shift 3
short=${M%%-*}
mkdir -p logs out/sel
$DPQ --threads 1 compare "$M" --methods "$METHODS" --calib-holdout --calib-samples 8 --calib-seq-len 2048 \
  --group-size 128 --ppl wikitext2-heldout --max-windows 4 --save-dir "out/sel/$short/$TAG" \
  --json "benchmarks/results/beyond-the-paper/sel_${short}_${TAG}.json" "$@" > "logs/sel_${short}_${TAG}.log" 2>&1
