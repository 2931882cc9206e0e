#!/usr/bin/env bash
# The main job on whatever device is here: prepare tiny-shakespeare, train a small char GPT, sample from it.
source "$(dirname "$0")/setup.sh"
SHAKESPEARE=${SHAKESPEARE:-../shared/data/tinyshakespeare.txt}   # a local copy, else downloaded
if [ -f "$SHAKESPEARE" ]; then
  vramfit prepare shakespeare --input "$SHAKESPEARE"
else
  vramfit prepare shakespeare
fi
vramfit train --data-dir data/shakespeare_char --out-dir out/demo \
  --n-layer 4 --n-head 4 --n-embd 128 --block-size 128 --batch-size 16 \
  --max-iters 600 --eval-interval 200 --eval-iters 10 --log-interval 50 --warmup-iters 50
vramfit sample --ckpt out/demo --prompt "ROMEO:" --max-new-tokens 300
