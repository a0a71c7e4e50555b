#!/usr/bin/env bash
# The test command: installs what only the tests need (PyTorch CPU, smplx, pytest), then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-torch.txt
# Whole files per worker (--dist loadfile): module fixtures are built once; the longest files
# first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order). Most long tests are
# single-threaded compiles and subprocess start-ups, so two workers share two cores well;
# PYTEST_WORKERS=0 runs everything in one process.
# It runs every test; the fast tier leaves out those marked slow (pytest.ini):
#     python -m pytest -q -m 'not slow' -n 2 tests
# Compile-bound: the tests compile hundreds of XLA programs and run each a few times. LLVM's
# cheapest pipeline (XLA's backend level 0) compiles a train step ~40% faster and runs it
# slower, a good trade here (docs/testing.md); XLA's HLO passes and the arithmetic's order
# are the same. The persistent compilation cache lets both workers and every subprocess job
# reuse a program one of them compiled (programs over 1 s of compile time).
export XLA_FLAGS="--xla_backend_optimization_level=0 ${XLA_FLAGS:-}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)/jax_cache}"
JAX_PLATFORMS=cpu python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=15 tests "$@"
