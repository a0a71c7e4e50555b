#!/usr/bin/env bash
# The test command: installs what only the tests need (PyTorch CPU, smplx, pytest), then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-torch.txt
# Whole files per worker (--dist loadfile): module fixtures are built once; the longest files
# first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order). Most long tests are
# single-threaded compiles, subprocess start-ups and waits (a process sleeping 40 s, jobs
# waiting for their peers), so three workers keep two cores busy: 13:22 against 13:57 with two
# on a quiet machine. Four gained nothing beside a 2-core job on a slow machine (29:46 against
# 29:42 with three) and slowed the neighbour more (docs/testing.md).
# PYTEST_WORKERS=0 runs everything in one process.
# It runs every test; the fast tier leaves out those marked slow (pytest.ini):
#     python -m pytest -q -m 'not slow' -n 2 tests
# Compile-bound: the tests compile hundreds of XLA programs and run each a few times. LLVM's
# cheapest pipeline (XLA's backend level 0) and XLA:CPU's older loop emitters instead of its
# fusion emitters halve a train step's XLA compile (8.7 -> 4.6 s of CPU at level 0) and run it
# ~20% slower, a good trade here (docs/testing.md). The HLO passes are the same; the emitted loops
# may sum in another order (last-ulp differences), which every comparison's tolerance allows
# for. The persistent compilation cache lets the workers and every subprocess job reuse a
# program one of them compiled (programs over 1 s of compile time).
export XLA_FLAGS="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false ${XLA_FLAGS:-}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)/jax_cache}"
JAX_PLATFORMS=cpu python -m pytest -q -n "${PYTEST_WORKERS:-3}" --dist loadfile --no-loadscope-reorder --durations=15 tests "$@"
