# Sourced by the other scripts: a virtual environment in .venv with vramfit and its dev tools.
# torch is pinned through constraints.txt (the package itself accepts a range, so GPU users keep their CUDA build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,ray]' \
    > .venv/pip-install.log 2>&1; then
  cat .venv/pip-install.log >&2
  echo "error: installing vramfit and its dependencies failed (log above)" >&2
  exit 1
fi
export PATH="$PWD/.venv/bin:$PATH"
