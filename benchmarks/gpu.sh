#!/usr/bin/env bash
# The GPU halves of the extraction (#11, #27) and SAE-scale (#17) benchmarks, in one run, as run on
# a lent CUDA machine (see README "Performance"). Writes the tables to $OUT (default /tmp/gpu-out).
#
#   bash ../shared/tools/device-wheels.sh      # here: wheels a torch+transformers-only machine lacks
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl torchvision==0.26.0   # here: torch 2.11's torchvision (nvJPEG)
#   bash benchmarks/gpu.sh                     # there, from the project root (carry .whl)
#
# Sizes (environment): IMAGES (extraction JPEGs, default 6144), IMAGE_SIZE (their side, default
# 448: about ImageNet's mean pixel count) and RESIZE (default 256; crop 224), WIDE_IMAGES (SAE store
# images, 256 patch tokens each, default 512), SWEEP_TOKENS (default 262144), DEVICE (default cuda);
# VARIANTS (DECODE:COMPRESSION:SHARD_IMAGES,..., default the cpu-decode baseline, then decode cuda
# with compression none and lz4, then none in shards of 1024 images), each with 1 and 2 cached
# blocks; DECODE_CHECK=0 leaves out the nvJPEG-vs-libjpeg distances (benchmarks/bench_decode.py);
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
  # decode: cuda needs torchvision's nvJPEG: say whether it imports and decodes on this GPU
  python3 - <<'PY'
import io
try:
    import torch, torchvision
    from PIL import Image
    from torchvision.io import decode_jpeg
    buf = io.BytesIO(); Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="JPEG")
    out = decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], device="cuda")
    print("torchvision", torchvision.__version__, "imports; nvJPEG decodes on", out[0].device)
except Exception as err:  # noqa: BLE001
    print("torchvision: NOT usable here:", type(err).__name__, err)
PY
} 2>&1 | tee "$OUT/machine.txt"
SECONDS=0
[ -z "${SKIP_EXTRACT:-}" ] && [ "${DECODE_CHECK:-1}" != 0 ] && python3 benchmarks/bench_decode.py --device "$DEVICE" \
  --images 256 --hidden 768 --layers 12 2>&1 | grep -v "it/s\]" | tee "$OUT/decode.txt"
[ -z "${SKIP_EXTRACT:-}" ] && python3 benchmarks/bench_extract.py --images "${IMAGES:-6144}" --hidden 768 --layers 12 --batch-size 128 \
  --chunk-images 32 --device "$DEVICE" --forward-dtype bfloat16 --cached 1,2 --image-size "${IMAGE_SIZE:-448}" \
  --resize "${RESIZE:-256}" --variants "${VARIANTS:-cpu:lz4:0,cuda:none:0,cuda:lz4:0,cuda:none:1024}" 2>&1 \
  | grep -v "it/s\]" | tee "$OUT/extract.txt"
[ -n "${SKIP_EXTRACT:-}" ] && COUNTS=""
for wt in ${COUNTS:-}; do
  python3 benchmarks/bench_extract.py --images "${IMAGES:-6144}" --hidden 768 --layers 12 --batch-size 128 \
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
