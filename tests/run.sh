#!/usr/bin/env bash
# The test command: installs what only the tests need (PyTorch CPU, smplx, pytest), then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-torch.txt
JAX_PLATFORMS=cpu python -m pytest -q tests "$@"
