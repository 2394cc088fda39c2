#!/usr/bin/env bash
# The test suite on a fresh machine: set up .venv, lint, run pytest. Without a GPU the kernels run in
# Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1); with one, on CUDA.
source "$(dirname "$0")/env.sh"
ruff check src tests benchmarks
ruff format --check src tests benchmarks
python -m pytest -q "$@"
