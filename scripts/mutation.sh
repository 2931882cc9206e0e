#!/usr/bin/env bash
# Mutation testing (mutmut) of the pure-logic modules, each against its fast unit tests only; writes the score per
# module and every survivor to results/bench/mutation.csv. Minutes per module: a benchmark, not part of CI.
#   bash scripts/mutation.sh                  every module (units grid features memmodel throughput suggest store
#                                             worker probe)
#   bash scripts/mutation.sh units memmodel   some of them
#   MUTATION_JOBS=1 bash scripts/mutation.sh  one mutant at a time (default 2)
# In an environment that already has vramfit[dev] installed: python scripts/mutation.py [module ...]
source "$(dirname "$0")/setup.sh"  # .venv with vramfit[dev] (mutmut, hypothesis), as scripts/test.sh
exec python scripts/mutation.py "$@"
