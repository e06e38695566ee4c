#!/bin/bash
# One point of the README's protocol for a method (issue 26): quantize (32 x 2048 WikiText-2 validation
# tokens, asymmetric g128), then perplexity on the first 16 WikiText-2 test windows of 2048.
# `dpq quantize` + `dpq eval` instead of `dpq compare`: one copy of the float model in memory.
#   usage: benchmarks/beyond_protocol.sh MODEL METHOD F SEED [dpq quantize flags...]
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=$PWD/src TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DPQ=${DPQ:-/work/main/.venv/bin/dpq}
M=$1; METHOD=$2; F=$3; SEED=$4; shift 4
short=${M%%-*}
CK=out/grid/${short}-g128-f${F}-seed${SEED}/$METHOD
OUT=benchmarks/results/beyond-the-paper/protocol_${short}_f${F}_seed${SEED}_${METHOD}
mkdir -p logs "$(dirname "$CK")"
if [ ! -f "$CK/config.json" ]; then
  /usr/bin/time -v $DPQ --threads ${THREADS:-2} quantize "$M" --method "$METHOD" --calib-samples ${SAMPLES:-32} \
    --calib-seq-len 2048 --group-size 128 --fp8-max "$F" --seed "$SEED" --out "$CK" "$@" > "logs/$(basename "$OUT").quantize.log" 2>&1 || exit 1
fi
$DPQ --threads ${THREADS:-2} eval "$CK" --max-windows 16 --json "$OUT.ppl16.json" > "logs/$(basename "$OUT").eval.log" 2>&1
