#!/usr/bin/env bash
# Mutation testing (mutmut) of the pure-logic modules, each against its fast unit tests only; writes the score per
# module and every survivor to results/bench/mutation.csv. Minutes per module: a benchmark, not part of CI.
#   scripts/mutation.sh                  every module (units grid features memmodel throughput suggest store worker probe)
#   scripts/mutation.sh units memmodel   some of them
#   MUTATION_JOBS=1 scripts/mutation.sh  one mutant at a time (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import mutmut, hypothesis" 2>/dev/null || pip install -q -e ".[dev]"
exec python scripts/mutation.py "$@"
