#!/usr/bin/env bash
# The prepared GPU check for the performance issue: bare loop vs `fusionindex embed` for the
# ViT-B/32 shape on 256 px JPEGs, images/s for both, in well under 8 minutes on one H100.
#
# On this machine first:   bash benchmarks/fetch_gpu_wheels.sh      (fills .whl/, git-ignored)
# Then with the device tool, from the repo root, carry [".whl"]:
#   bash benchmarks/gpu_check.sh
# It installs the carried wheels (Beam and what the GPU image lacks) into /tmp/site, prints the
# versions it runs with, and writes $OUT/gpu-{tensor,pil}.json (benchmarks/results/ without $OUT).
# DEVICE=cpu ROWS=64 rehearses it on a machine without a GPU (same install and code path).
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 - <<'PY'
import torch, torchvision, transformers, apache_beam, pyarrow
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "| torchvision", torchvision.__version__,
      "| transformers", transformers.__version__, "| beam", apache_beam.__version__, "| pyarrow", pyarrow.__version__)
PY
OUTDIR=${OUT:-benchmarks/results}
ROWS=${ROWS:-8192}
DEVICE=${DEVICE:-cuda}
for pre in tensor pil; do
  timeout 200 python3 -m benchmarks.bench --sections embed --model vit-b-32 --rows "$ROWS" --image-size 256 --batch-size 256 --rows-per-group 1024 --device "$DEVICE" --repeat 1 \
    --embed-args "--preprocess $pre" --output "$OUTDIR/gpu-$pre.json" || echo "gpu check with --preprocess $pre failed or timed out"
done
