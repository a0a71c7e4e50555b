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
JAX_PLATFORMS=cpu python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=15 tests "$@"
