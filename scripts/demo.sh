#!/usr/bin/env bash
# The main job, end to end on whatever device is here (a GPU if CUDA is available, else the CPU):
# prepare tiny-shakespeare -> profile the device (sweep) -> fit the memory model -> suggest configs that fit
# a budget -> train the top suggestion (predicted vs measured memory) -> sample from it -> plots + HTML report.
source "$(dirname "$0")/setup.sh"
SHAKESPEARE=${SHAKESPEARE:-../shared/data/tinyshakespeare.txt}   # a local copy, else downloaded
VRAM=${VRAM:-256M}                 # the budget to plan for (on the CPU: RAM for training)
DB=${DB:-results/vramfit.sqlite}
# plan for the device profiled here (suggest's default, auto, plans for a GPU by the dry run on a CPU-only machine)
DEVICE=${DEVICE:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}
set -x
vramfit info
if [ -f "$SHAKESPEARE" ]; then vramfit prepare shakespeare --input "$SHAKESPEARE"; else vramfit prepare shakespeare; fi
vramfit sweep --grid experiments/grids/quick.toml --db "$DB"
vramfit fit --db "$DB"
vramfit suggest --vram "$VRAM" --device "$DEVICE" --vocab 65 --block-size 128 --n-layer 2,4 --n-embd 128,192,256 \
  --objective balanced --top 5 --data-dir data/shakespeare_char
vramfit train --suggestion 1 --db "$DB" --max-iters 200 --eval-interval 100 --eval-iters 10 \
  --log-interval 50 --warmup-iters 30
vramfit sample --ckpt out/suggest-1 --prompt "ROMEO:" --max-new-tokens 200
vramfit plot --db "$DB" --vram "$VRAM"
vramfit report --db "$DB" --vram "$VRAM"
