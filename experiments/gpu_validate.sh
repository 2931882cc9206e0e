#!/usr/bin/env bash
# Validate vramfit on one lent GPU: profile it adaptively, check the model on held-out points, and check the
# suggestions for 8/12/16/24 GiB cards for real under an emulated cap. Everything lands in results/gpu/<gpu-slug>/.
#
#   bash experiments/gpu_validate.sh            # run the stages not done yet, stopping before ~9 minutes
#   bash experiments/gpu_validate.sh STAGE ...  # run these stages (again), e.g. `sweep` or `budget-8 summary`
#
# Stages, in order (a stage that finished leaves results/gpu/<slug>/.stages/<stage>.done and is skipped):
#   setup      check python, CUDA torch and the dependencies (never installs torch); prepare a corpus
#   demo       scripts/demo.sh (the README's main command) on this GPU, with this python; log in demo.log
#   info       vramfit info, nvidia-smi, provenance.json (device, driver, torch, CUDA, recipe, date, commit)
#   check-4 .. check-9
#              issue 12 on the real card (experiments/gpu_checks.py; results in checks/item<N>.json):
#              4 own PID vs a foreign process, 5 train --measure's GPU and baseline, 6 emulated-card caps,
#              7 peak vs raw NVML, 8 step 1 out of the peak (compiled), 9 NCCL's memory   ~1-2 min each
#   sweep      adaptive sweep over experiments/grids/gpu_adaptive.toml (bf16, compile, flash; <= 12 points;
#              resumes from the database when cut off: rerun the stage)                      ~6-10 min
#   heldout    the 6 held-out points of experiments/grids/gpu_heldout.toml (own database)   ~3-5 min
#   fit        fit, model JSON, CSV exports, plots, held-out errors                        ~1 min
#   budget-8 budget-12 budget-16 budget-24
#              suggest for that card, train suggestion #1 for 20 iterations under the cap (must not OOM),
#              then try the next larger batch under the cap (should OOM)                    ~1-2 min each
#   compile-cache
#              a compiled sweep of experiments/grids/compile_gpu.toml (3 batch sizes of one shape) with the
#              sweep's shared Inductor cache and with every cache off: total wall time and compile seconds per
#              point, readings compared (experiments/bench_compile_cache.py -> compile-cache.md)   ~3-5 min
#   dynamic-batch
#              the same 3 points static and with a dynamic batch dimension (--static-batch / --dynamic-batch),
#              each with every cache off and with the shared cache: NVML, reserved and allocated bytes compared,
#              compile seconds, cache hits, Dynamo graphs (experiments/bench_dynamic_batch.py -> dynamic-batch.md;
#              each finished arm is kept in dynamic-batch.md.json, so a cut-off run resumes; delete it to
#              measure again)                                                                    ~6-10 min
#   summary    summary.md with every table, and which of issue 12's items this GPU checked    seconds
# Expected device time: ~45 minutes over five or six 10-minute commands.
#
# Environment: VRAMFIT_PYTHON (default: .venv/bin/python if present, else python3), VRAMFIT_CORPUS (a UTF-8
# text file; default ../shared/data/tinyshakespeare.txt, else a generated one), VRAMFIT_STAGE_SECONDS (the time
# box for one invocation, default 540), VRAMFIT_POINTS (adaptive points, default 12).
# No network is needed. Install the project beforehand with `pip install -e . --no-deps` (or not at all: the
# script runs `python -m vramfit` from the repository root) against the machine's own CUDA torch.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${VRAMFIT_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
BOX="${VRAMFIT_STAGE_SECONDS:-540}"
POINTS="${VRAMFIT_POINTS:-12}"
START=$(date +%s)
VF=("$PY" -m vramfit)
HELP="$PY experiments/gpu_validate.py"
STAGES=(setup demo info check-4 check-5 check-6 check-7 check-8 check-9 sweep heldout fit budget-8 budget-12 budget-16
        budget-24 compile-cache dynamic-batch summary)

log() { echo "[gpu_validate $(date +%H:%M:%S)] $*"; }
left() { echo $(( BOX - ($(date +%s) - START) )); }

# the GPU's name -> folder (NVML through vramfit; no CUDA context in this shell)
SLUG=$("$PY" - <<'EOF'
import re
from vramfit.measure import devices
gpus, _ = devices.cuda_devices()
name = gpus[0].device_name if gpus else "no-gpu"
print(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
EOF
)
if [[ -z "$SLUG" || "$SLUG" == "no-gpu" ]]; then
  echo "error: no CUDA GPU visible (vramfit info says: $("${VF[@]}" info 2>&1 | head -3 | tr '\n' ' '))" >&2
  exit 2
fi
OUT="results/gpu/$SLUG"
DATA="data/gpu_validate_char"
mkdir -p "$OUT/.stages"
log "GPU folder $OUT; python $PY; time box ${BOX}s"

run_stage() {  # run_stage NAME: returns 0 when done, 3 when cut off by the time box (rerun to resume)
  local s=$1 t
  t=$(left)
  case "$s" in
    setup)
      "$PY" - <<'EOF' || return 2
import importlib, sys
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("error: this torch has no CUDA (do not reinstall torch: use the machine's CUDA build)")
missing = []
for mod in ("numpy", "pandas", "sklearn", "matplotlib", "tiktoken", "pynvml", "typer", "rich"):
    try:
        importlib.import_module(mod)
    except ImportError:
        missing.append(mod)
if missing:
    sys.exit("error: missing python modules: " + ", ".join(missing)
             + " (pip install them without touching torch, e.g. pip install --no-deps ...)")
import vramfit, gpt  # noqa: F401  (from the repository root)
print("dependencies ok")
EOF
      local corpus="${VRAMFIT_CORPUS:-}"
      if [[ -z "$corpus" && -f ../shared/data/tinyshakespeare.txt ]]; then corpus=../shared/data/tinyshakespeare.txt; fi
      if [[ -z "$corpus" ]]; then corpus=data/gpu_validate.txt; $HELP corpus "$corpus" || return 2; fi
      if [[ ! -f "$DATA/meta.json" ]]; then
        "${VF[@]}" prepare --input "$corpus" --tokenizer char --data-dir "$DATA" || return 2
      fi
      echo "$corpus" > "$OUT/corpus.txt" ;;
    demo)  # the README's main command first, with this machine's python (no install), a scratch database
      VRAMFIT_PYTHON="$PY" SHAKESPEARE="$(cat "$OUT/corpus.txt")" DB="$OUT/demo.sqlite" ITERS=100 \
        timeout "$t" bash scripts/demo.sh > "$OUT/demo.log" 2>&1
      local rc=$?
      tail -5 "$OUT/demo.log"
      [[ $rc -eq 124 ]] && return 3
      [[ $rc -eq 0 ]] || return 2
      grep -E "predicted .* vs measured" "$OUT/demo.log" > "$OUT/demo-result.txt" || true ;;
    info)
      "${VF[@]}" info > "$OUT/info.txt" 2>&1
      "${VF[@]}" info --json > "$OUT/info.json" 2>/dev/null
      nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
      $HELP provenance "$OUT" || return 2
      cat "$OUT/info.txt" ;;
    sweep)
      timeout --signal=INT --kill-after=20 "$t" "${VF[@]}" sweep --plan adaptive --points "$POINTS" \
        --target-error 0.03 --grid experiments/grids/gpu_adaptive.toml --device cuda --db "$OUT/vramfit.sqlite" \
        2>&1 | tee -a "$OUT/sweep.log"
      local rc=${PIPESTATUS[0]}
      [[ $rc == 124 || $rc == 130 || $rc == 137 ]] && return 3
      [[ $rc == 0 ]] || return 2 ;;
    heldout)
      timeout --signal=INT --kill-after=20 "$t" "${VF[@]}" sweep --grid experiments/grids/gpu_heldout.toml \
        --device cuda --db "$OUT/heldout.sqlite" 2>&1 | tee -a "$OUT/heldout.log"
      local rc=${PIPESTATUS[0]}
      [[ $rc == 124 || $rc == 130 || $rc == 137 ]] && return 3
      [[ $rc == 0 ]] || return 2 ;;
    fit)
      rm -rf "$OUT/models"
      "${VF[@]}" fit --db "$OUT/vramfit.sqlite" --models "$OUT/models" 2>&1 | tee "$OUT/fit.txt"
      [[ ${PIPESTATUS[0]} == 0 ]] || return 2
      "${VF[@]}" export --db "$OUT/vramfit.sqlite" --csv "$OUT/points.csv" || return 2
      "${VF[@]}" export --db "$OUT/heldout.sqlite" --csv "$OUT/heldout_points.csv" || return 2
      "${VF[@]}" plot --db "$OUT/vramfit.sqlite" --plots "$OUT/plots" --vram 24G || log "plots failed (not fatal)"
      $HELP heldout "$OUT" 2>&1 | tee "$OUT/heldout.txt"
      [[ ${PIPESTATUS[0]} == 0 ]] || return 2
      $HELP dryrun "$OUT" 2>&1 | tee "$OUT/dryrun.txt" || log "dry-run comparison failed (not fatal)" ;;
    budget-*)
      local gib=${s#budget-}
      (( t > 240 )) || return 3  # a budget needs ~2-4 minutes: start it in the next invocation
      timeout --signal=INT --kill-after=20 "$t" $HELP budget "$OUT" "${gib}G" "$DATA"
      local rc=$?
      [[ $rc == 124 || $rc == 130 || $rc == 137 ]] && return 3
      [[ $rc == 0 ]] || return 2
      [[ -f "$OUT/budgets.sqlite" ]] && "${VF[@]}" export --db "$OUT/budgets.sqlite" --csv "$OUT/budgets.csv" >/dev/null ;;
    check-*)
      local item=${s#check-}
      (( t > 150 )) || return 3  # a check needs ~1-2 minutes: start it in the next invocation
      timeout --signal=INT --kill-after=20 "$t" $HELP check "$item" "$OUT" "$DATA" 2>&1 | tee -a "$OUT/checks.log"
      local rc=${PIPESTATUS[0]}
      [[ $rc == 124 || $rc == 130 || $rc == 137 ]] && return 3
      [[ $rc == 0 || $rc == 1 ]] || return 2 ;;  # a failed check is a result (in summary.md), not a crash
    compile-cache)
      (( t > 300 )) || return 3  # two compiled sweeps: start them in the next invocation
      timeout --signal=INT --kill-after=20 "$t" "$PY" experiments/bench_compile_cache.py \
        --grid experiments/grids/compile_gpu.toml --device cuda --out "$OUT/compile-cache.md" 2>&1 \
        | tee -a "$OUT/compile-cache.log"
      local rc=${PIPESTATUS[0]}
      [[ $rc == 124 || $rc == 130 || $rc == 137 ]] && return 3
      [[ $rc == 0 ]] || return 2 ;;
    dynamic-batch)
      (( t > 240 )) || return 3  # an arm (3 compiled points) needs ~2-4 minutes: start it in the next invocation
      timeout --signal=INT --kill-after=20 "$t" "$PY" experiments/bench_dynamic_batch.py \
        --grid experiments/grids/compile_gpu.toml --device cuda --out "$OUT/dynamic-batch.md" 2>&1 \
        | tee -a "$OUT/dynamic-batch.log"
      local rc=${PIPESTATUS[0]}
      [[ $rc == 124 || $rc == 130 || $rc == 137 ]] && return 3  # the arms done are in dynamic-batch.md.json
      [[ $rc == 0 ]] || return 2 ;;
    summary)
      $HELP summary "$OUT" || return 2 ;;
    *)
      echo "error: unknown stage '$s' (stages: ${STAGES[*]})" >&2; return 2 ;;
  esac
  return 0
}

if (( $# )); then todo=("$@"); force=1; else todo=("${STAGES[@]}"); force=0; fi
for s in "${todo[@]}"; do
  if (( ! force )) && [[ -f "$OUT/.stages/$s.done" ]]; then continue; fi
  if (( $(left) < 30 )); then
    log "time box spent before '$s': run the script again to continue"; exit 3
  fi
  log "stage $s ($(left)s left in this invocation)"
  run_stage "$s"; rc=$?
  if [[ $rc == 0 ]]; then
    date -u +%Y-%m-%dT%H:%M:%SZ > "$OUT/.stages/$s.done"
  elif [[ $rc == 3 ]]; then
    log "stage $s cut off by the time box; its progress is saved: run the script again to continue"; exit 3
  else
    log "stage $s failed (exit $rc)"; exit "$rc"
  fi
done
if (( ! force )); then
  log "all stages done: $OUT/summary.md"
fi
