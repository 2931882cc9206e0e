#!/usr/bin/env bash
# The test command: installs what it needs, then lint + the CPU test suite (GPU tests skip without CUDA).
# pytest runs in PYTEST_WORKERS processes (default 2, pytest-xdist), a test file per process at a time (`loadfile`:
# a file's module fixtures are built once); the session fixtures are shared through tests/conftest.py's run folder.
source "$(dirname "$0")/setup.sh"
ruff check .
lint-imports
pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
