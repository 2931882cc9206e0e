#!/usr/bin/env bash
# The test command: installs what it needs, then lint + the CPU test suite (GPU tests skip without CUDA).
source "$(dirname "$0")/setup.sh"
ruff check .
lint-imports
pytest -q "$@"
