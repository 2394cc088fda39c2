#!/usr/bin/env bash
# Issue 19 on one H200, in one go (about 8 minutes): the accuracy of W8A8 on a trained model, the
# fused producers against Inductor's fusion, and the compiled model benchmark at reduced depth.
#
#   bash benchmarks/ab/end_to_end.sh $OUT            # LAYERS=2 by default; LAYERS=32 is full depth (long)
#
# Full depth (llama3-8b, 32 layers; every variant compiles three graphs of the whole model, several
# minutes each, so the variants are split over the host's GPUs: on 2, GPU 0 runs the first two and
# GPU 1 the last two; model_results.json is rewritten after every variant, so a run killed at a time
# limit keeps the finished ones):
#   PYTHONPATH=src python3 -m scaledmm bench-model --compile --model llama3-8b --gpus all \
#       --variants bf16,scaledmm-fp8-inductor,torch-fp8-inductor,scaledmm-int8-fusedquant --out $OUT/model-compiled
set -euo pipefail
OUT=${1:?usage: end_to_end.sh OUT_DIR}
LAYERS=${LAYERS:-2}
mkdir -p "$OUT"
export PYTHONPATH=src
start=$SECONDS

# 1. Perplexity on a trained model (90 s of training, then nine variants evaluated).
python3 -m scaledmm eval-model --train-seconds 90 --out "$OUT/eval" 2>&1 | tee "$OUT/eval.log"
echo "[eval-model done at $((SECONDS - start)) s]"

# 2. Fused producers: ours against Inductor's fusion and the unfused pair, and their bits.
python3 benchmarks/ab/fused_producers.py 2>&1 | tee "$OUT/fused_producers.log"
echo "[fused_producers done at $((SECONDS - start)) s]"

# 3. The compiled model benchmark, every variant compiled the same way, at reduced depth.
python3 -m scaledmm bench-model --compile --model llama3-8b --layers "$LAYERS" \
    --out "$OUT/model-compiled-l$LAYERS" 2>&1 | tee "$OUT/model-compiled-l$LAYERS.log"
echo "[bench-model --compile done at $((SECONDS - start)) s]"
