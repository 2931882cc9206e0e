#!/usr/bin/env bash
# The main job, end to end on whatever device is here (a GPU if CUDA is available, else the CPU):
# prepare tiny-shakespeare -> profile the device (sweep) -> fit the memory model -> suggest configs that fit
# a budget -> train the top suggestion (predicted vs measured memory) -> sample from it -> plots + HTML report.
if [ -n "${VRAMFIT_PYTHON:-}" ]; then  # a prepared environment (a GPU image): no venv, no install
  cd "$(dirname "$0")/.."
  vramfit() { "$VRAMFIT_PYTHON" -m vramfit "$@"; }
  python() { "$VRAMFIT_PYTHON" "$@"; }
  set -euo pipefail
else
  source "$(dirname "$0")/setup.sh"
fi
SHAKESPEARE=${SHAKESPEARE:-../shared/data/tinyshakespeare.txt}   # a local copy, else downloaded
DB=${DB:-results/vramfit.sqlite}
# plan for the device profiled here (suggest's default target, auto, plans for a GPU by the dry run on a CPU-only
# machine), inside the ranges the quick grid measured (--within-measured): nothing is extrapolated from its small
# models, so no suggestion needs a widened margin
TARGET=${TARGET:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
if [ "$TARGET" = cuda ]; then
  VRAM=${VRAM:-auto}  # the GPU's own memory (NVML total - what other processes hold - 2%)
  echo "demo on CUDA: bf16 + torch.compile where the GPU supports them, memory = NVML of the worker process;"
  echo "  plan for VRAM=$VRAM (the GPU's memory), within the ranges the quick grid measured"
else
  # on the CPU the budget is RAM: at the 65-token vocabulary 64M binds inside the quick grid's ranges
  VRAM=${VRAM:-64M}
  echo "demo on the CPU: float32, eager, memory = peak of live tensor storages (and RSS); plan for VRAM=$VRAM of RAM,"
  echo "  within the ranges the quick grid measured"
fi
ITERS=${ITERS:-200}                # the suggestion trains for this many iterations (a minute or two on either device)
set -x
vramfit info
if [ -f "$SHAKESPEARE" ]; then vramfit prepare shakespeare --input "$SHAKESPEARE"; else vramfit prepare shakespeare; fi
vramfit sweep --grid experiments/grids/quick.toml --db "$DB"
vramfit fit --db "$DB"
vramfit suggest --vram "$VRAM" --target "$TARGET" --vocab 65 --block-size 128 --n-layer 2,4 --n-embd 128,192,256 \
  --objective balanced --top 5 --data-dir data/shakespeare_char --within-measured
vramfit train --suggestion 1 --db "$DB" --max-iters "$ITERS" --eval-interval 100 --eval-iters 10 \
  --log-interval 50 --warmup-iters 30
vramfit sample --ckpt out/suggest-1 --prompt "ROMEO:" --max-new-tokens 200
vramfit plot --db "$DB"
vramfit report --db "$DB"
