#!/usr/bin/env bash
# Every GPU figure of the performance chapter in one command, sized for a ~10-minute session on one H100:
#
#   bash benchmarks/gpu.sh                 # writes results/benchmarks/*-cuda-<gpu>.json
#   QUICK=1 bash benchmarks/gpu.sh         # a 1-minute smoke run of the same steps (files go to $OUT_DIR)
#   ONLY=oti bash benchmarks/gpu.sh        # only the OTI runs (the issue's goal), for a short device session
#   DEADLINE=480 ONLY=oti bash benchmarks/gpu.sh   # the same, every step cut to what is left of 480 s
#   FAST_L14=8192 ONLY=oti bash benchmarks/gpu.sh  # ViT-L/14's fast run over 4 batches (FAST_B32 likewise)
#   DEVICE=cpu QUICK=1 OUT_DIR=/tmp/b EXTRA="--threads 1" bash benchmarks/gpu.sh   # the same on a CPU, to check it
#
# ViT-B/32 and ViT-L/14 with random weights (they cost what trained weights cost), in order of importance:
#   1. OTI, reference vs fast in the same run: the official-cost loop (batch 32, fp16 autocast, 350 steps, one
#      batch) against the fast path (batch 4096 / 2048, bf16 autocast, 350 steps), plus an fp32 comparison of both paths
#      on 64 images x 50 steps (token differences without fp16/bf16 rounding). Goal (issue 6): >= 46 images/s
#      (ViT-B/32) and >= 22 images/s (ViT-L/14), i.e. 100x / 50x the official loop's 0.46 / 0.44 on an H100.
#   2. phi training steps/s (batch 256, fp16 autocast), with and without the GPT-phrase loss.
#   3. Feature extraction images/s (synthetic 500x375 JPEGs, batch 256, 0 vs 8 loader workers).
#   4. Retrieval queries/s, exact top-50 at 10k / 123k / 1M gallery images (torch on the GPU) and FAISS IVF.
#   With NOISE=8, the reference path also reruns 8 images from initial tokens one float32 ulp away (the size of
#   token differences that rounding alone causes; about a minute more per model).
#   With COMPILE=1, one more ViT-B/32 OTI run times the fast path under torch.compile (mode reduce-overhead:
#   CUDA graphs), after a first untimed run that compiles (minutes).
#   With PROFILE=1, benchmarks/oti_profile.py splits each model's fast path into set-up and steps, and times the
#   steps with packed rows and without (what packing saves on this GPU, and the operators each launches per step;
#   about a minute per model), and benchmarks/oti_host.py times the host's share of the ViT-L/14 whole run (the
#   text tower replaced by a stand-in: what this host alone allows, whatever the GPU; under a minute).
# A step that fails is reported and the next one runs; the exit status says whether any failed.
# Expected time on one H100: about 3 + 3.5 + 1 + 1 + 1 minutes (the reference OTI batches dominate).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
DEVICE=${DEVICE:-cuda}
OUT_DIR=${OUT_DIR:-results/benchmarks}
QUICK=${QUICK:-0}
EXTRA=${EXTRA:-}  # appended to every benchmark command (e.g. --threads 1 on a busy CPU)
ONLY=${ONLY:-oti phi features retrieval}  # the parts to run (ONLY=oti: the issue's goal alone, ~6 minutes)
LIMIT=${LIMIT:-1}  # multiplies every step's time limit (a CPU check of the script needs more)
DEADLINE=${DEADLINE:-0}  # if set, seconds for the whole script: a step gets at most what is left (a lease's end)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
failed=()

if [ "$DEVICE" != cpu ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
    || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

if [ "$QUICK" = 1 ]; then
  STEPS=3; REF=4; FAST_B32=16; FAST_L14=8; BATCH_B32=8; BATCH_L14=8; CHECK=4; CHECK_STEPS=3
  PHI_STEPS=2; PHI_BATCH=32; FEAT=16; FEAT_BATCH=8; SIZES="2000 5000"; QUERIES="20 20"; WORKERS="0 2"
  HOST_WORKERS=2
else
  # FAST_L14=8192 (four batches): a whole run long enough for its one-off costs to matter less
  STEPS=350; REF=32; FAST_B32=${FAST_B32:-8192}; FAST_L14=${FAST_L14:-2048}; BATCH_B32=4096; BATCH_L14=2048
  CHECK=64; CHECK_STEPS=50
  PHI_STEPS=50; PHI_BATCH=256; FEAT=2048; FEAT_BATCH=256; SIZES="10000 123403 1000000"; QUERIES="1000 1000 1000"; WORKERS="0 8"
  HOST_WORKERS=8  # what run_oti uses on a 16-core GPU host
fi

want() { [[ " $ONLY " == *" $1 "* ]]; }

run() {  # run <label> <timeout seconds> <command...>
  local label=$1 limit=$2; shift 2
  echo "=== $label: $*" >&2
  local t0=$SECONDS
  limit=$((limit * LIMIT))
  if [ "$DEADLINE" -gt 0 ] && [ $((DEADLINE - SECONDS)) -lt "$limit" ]; then limit=$((DEADLINE - SECONDS)); fi
  if [ "$limit" -le 0 ]; then
    echo "!!! $label SKIPPED (DEADLINE=$DEADLINE s reached)" >&2; failed+=("$label"); return
  fi
  # shellcheck disable=SC2086
  if ! timeout "$limit" "$@" $EXTRA; then
    echo "!!! $label FAILED (or ran past ${limit}s)" >&2
    failed+=("$label")
  fi
  echo "=== $label took $((SECONDS - t0)) s" >&2
}

want oti && for model in ViT-B-32 ViT-L-14; do
  fast=$FAST_B32; batch=$BATCH_B32; [ "$model" = ViT-L-14 ] && fast=$FAST_L14 && batch=$BATCH_L14
  # a few steps first: a fast path that cannot run on this GPU fails here in seconds, not after the reference
  run "oti-smoke-$model" 300 "$PY" benchmarks/oti.py --model "$model" --device "$DEVICE" --steps 3 \
    --ref-images 4 --fast-images 8 --fast-batch 8 --no-save
  run "oti-$model" 600 "$PY" benchmarks/oti.py --model "$model" --device "$DEVICE" --steps "$STEPS" \
    --ref-images "$REF" --ref-batch 32 --fast-images "$fast" --fast-batch "$batch" --concepts 2000 \
    --check-images "$CHECK" --check-steps "$CHECK_STEPS" --noise-images "${NOISE:-0}" --out "$OUT_DIR"
done
if want oti && [ "${COMPILE:-0}" = 1 ]; then
  run "oti-compiled-ViT-B-32" 600 "$PY" benchmarks/oti.py --model ViT-B-32 --device "$DEVICE" --steps "$STEPS" \
    --ref-images "$REF" --ref-batch 32 --fast-images "$FAST_B32" --fast-batch "$BATCH_B32" --concepts 2000 \
    --compile reduce-overhead --tag compiled --out "$OUT_DIR"
fi
if want oti && [ "${PROFILE:-0}" = 1 ]; then
  for model in ViT-B-32 ViT-L-14; do
    batch=$BATCH_B32; [ "$model" = ViT-L-14 ] && batch=$BATCH_L14
    run "oti-profile-$model" 300 "$PY" benchmarks/oti_profile.py --model "$model" --device "$DEVICE" \
      --batches "$batch" --steps 20 --plan-steps "$STEPS" --unpacked --out "$OUT_DIR"
  done
  fast=$FAST_L14; batch=$BATCH_L14
  run "oti-host-ViT-L-14" 300 "$PY" benchmarks/oti_host.py --model ViT-L-14 --device "$DEVICE" --images "$fast" \
    --batch "$batch" --steps "$STEPS" --workers "$HOST_WORKERS" --out "$OUT_DIR"
fi
want phi && for model in ViT-B-32 ViT-L-14; do
  run "phi-$model" 300 "$PY" benchmarks/phi.py --model "$model" --device "$DEVICE" --steps "$PHI_STEPS" \
    --batch "$PHI_BATCH" --concepts 2000 --out "$OUT_DIR"
done
want features && for model in ViT-B-32 ViT-L-14; do
  # shellcheck disable=SC2086
  run "features-$model" 300 "$PY" benchmarks/features.py --model "$model" --device "$DEVICE" --images "$FEAT" \
    --batch "$FEAT_BATCH" --workers $WORKERS --out "$OUT_DIR"
done
# shellcheck disable=SC2086
want retrieval && run retrieval 400 "$PY" benchmarks/retrieval.py --device "$DEVICE" --sizes $SIZES --queries $QUERIES \
  --out "$OUT_DIR"

ls -l "$OUT_DIR"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
echo "all benchmarks done; JSON under $OUT_DIR" >&2
