#!/usr/bin/env bash
# The GPU halves of the extraction (#11) and SAE-scale (#17) benchmarks, in one run, as run on a
# lent CUDA machine (see README "Performance"). Writes the tables to $OUT (default /tmp/gpu-out).
#
#   bash ../shared/tools/device-wheels.sh      # here: wheels a torch+transformers-only machine lacks
#   bash benchmarks/gpu.sh                     # there, from the project root (carry .whl)
#
# Sizes (environment): IMAGES (extraction images, default 8192), WIDE_IMAGES (SAE store images,
# 256 patch tokens each, default 512), SWEEP_TOKENS (default 262144), DEVICE (default cuda);
# COUNTS="W,T ..." adds a 2-block extraction table per decode-worker,write-thread pair;
# SKIP_SAE=1 leaves the SAE benchmark out, SKIP_EXTRACT=1 the extraction benchmark.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import zarr" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc
  python3 -c "import torch, transformers, zarr; print('torch', torch.__version__, 'transformers', transformers.__version__, 'zarr', zarr.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
SECONDS=0
[ -z "${SKIP_EXTRACT:-}" ] && python3 benchmarks/bench_extract.py --images "${IMAGES:-8192}" --hidden 768 --layers 12 --batch-size 128 \
  --chunk-images 32 --device "$DEVICE" --forward-dtype bfloat16 --cached 1,2 2>&1 \
  | grep -v "it/s\]" | tee "$OUT/extract.txt"
[ -n "${SKIP_EXTRACT:-}" ] && COUNTS=""
for wt in ${COUNTS:-}; do
  python3 benchmarks/bench_extract.py --images "${IMAGES:-8192}" --hidden 768 --layers 12 --batch-size 128 \
    --chunk-images 32 --device "$DEVICE" --forward-dtype bfloat16 --cached 2 --num-workers "${wt%,*}" \
    --write-threads "${wt#*,}" 2>&1 | grep -v "it/s\]" | tee -a "$OUT/extract.txt"
done
echo "bench_extract: ${SECONDS} s" | tee -a "$OUT/extract.txt"
[ -n "${SKIP_SAE:-}" ] && exit 0
SECONDS=0
python3 benchmarks/bench_sae.py --device "$DEVICE" --threads "$(nproc)" --workers 8 --wide-images "${WIDE_IMAGES:-512}" \
  --sweep-tokens "${SWEEP_TOKENS:-262144}" --skip-demo-sweeps --json "$OUT/sae.json" 2>&1 \
  | grep -v "it/s\]" | tee "$OUT/sae.txt"
echo "bench_sae: ${SECONDS} s" | tee -a "$OUT/sae.txt"
