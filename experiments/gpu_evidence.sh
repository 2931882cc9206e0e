#!/usr/bin/env bash
# The first thing to run on a lent GPU: one command, <= 8 minutes on an H100, that brings back the evidence only a
# GPU can give (the measured CUDA context and non-allocator memory, the GPU-only assumption checks, a compiled
# sweep with the dry-run estimate beside each point, the fork-safety and gpu-marked tests), stage by stage in
# priority order, each bundled under the output folder the moment it ends (a run cut off keeps what it finished).
#
#   bash experiments/gpu_evidence.sh --out DIR          # at most 8 files in DIR: summary.md + one .tar.gz per group
#   bash experiments/gpu_evidence.sh                    # into results/gpu/<gpu-name>/
#   bash experiments/gpu_evidence.sh --budget-s 300     # cut the plan to 300 s (prints what it skipped)
#   bash experiments/gpu_evidence.sh --list             # the stages, their estimated seconds and the total
#
# Without a CUDA GPU it is a rehearsal: the CUDA stages say so and skip, the others run on the CPU.
# It runs with the machine's own torch and installs nothing: VRAMFIT_PYTHON (default .venv/bin/python where it
# exists, else python3) from the repository root. The logic is experiments/gpu_evidence.py (plan, time limits,
# bundling, summary) and experiments/gpu_stages.py (what each stage measures).
set -uo pipefail
cd "$(dirname "$0")/.."
py="${VRAMFIT_PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
VRAMFIT_PYTHON="$py" exec "$py" experiments/gpu_evidence.py "$@"
