#!/usr/bin/env bash
# The CPU figures of the performance chapter, as committed under results/benchmarks/ (about 65 minutes on a busy
# 2-core machine). One torch thread: on a machine whose cores are shared with other work, two OpenMP threads
# that wait for each other made small kernels several times slower than one thread in our tests.
# The runs are scaled down from the official 350 OTI steps (rates are per image-step and converted back).
#
#   bash benchmarks/cpu.sh            # OUT_DIR=... to write elsewhere
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT_DIR=${OUT_DIR:-results/benchmarks}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=""
failed=()
run() { echo "=== $*" >&2; "$@" --threads 1 --out "$OUT_DIR" > /dev/null || failed+=("$2 $4"); }

run "$PY" benchmarks/oti.py --model test-tiny-vit --steps 20 --ref-images 32 --fast-images 256 --fast-batch 256 \
  --rounds 3 --ablation --noise-images 32 --compile 1
run "$PY" benchmarks/oti.py --model ViT-B-32 --steps 5 --ref-images 32 --fast-images 128 --fast-batch 128 \
  --rounds 2 --ablation --noise-images 16 --phrases 32  # 32 phrases per concept: the one-off encoding in minutes
run "$PY" benchmarks/oti_profile.py --model ViT-B-32 --batches 128 --steps 3 --plan-steps 10 --profile-steps 2 --unpacked
run "$PY" benchmarks/oti_profile.py --model ViT-L-14 --batches 64 --steps 3 --plan-steps 5 --profile-steps 2 --unpacked
run "$PY" benchmarks/oti_host.py --model ViT-B-32 --images 2048 --batch 1024 --workers 2
run "$PY" benchmarks/phi.py --model test-tiny-vit --steps 20
run "$PY" benchmarks/phi.py --model ViT-B-32 --steps 5 --phrases 32
run "$PY" benchmarks/features.py --model test-tiny-vit --images 256
run "$PY" benchmarks/features.py --model ViT-B-32 --images 64
run "$PY" benchmarks/retrieval.py
run "$PY" benchmarks/retrieval.py --data clustered
if [ ${#failed[@]} -gt 0 ]; then echo "failed: ${failed[*]}" >&2; exit 1; fi
