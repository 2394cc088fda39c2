#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, then `scaledmm demo` (a benchmark against the vendor
# kernels on a GPU; a correctness check through Triton's interpreter without one). Extra arguments go
# to `scaledmm`, e.g. `bash scripts/demo.sh bench --model llama3-8b`.
source "$(dirname "$0")/env.sh"
if ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    export TRITON_INTERPRET=1
fi
scaledmm "${@:-demo}"
