#!/usr/bin/env bash
# The prepared GPU check for the throughput issue (#13), ViT-B/32 shape on 256 px JPEGs, in one run
# of at most 9 minutes on one H100/H200:
#   1. ceilings alone (benchmarks/ceilings.py): forward image / image+text at batch 256 and 1024,
#      decode_jpeg on the GPU, the tensor preprocessor, PIL + processor, tokenizing;
#   2. `fusionindex embed --preprocess tensor` and (last) `--preprocess pil`, bare loop beside each, with
#      the manifest's stage table (where the units' time went) and host work per row;
#   2b. the tensor path with `--decode-ahead stream` (decode on a CUDA stream of its own, so that it
#      may overlap the forward passes), and a parity check of its vectors against `--decode-ahead on`
#      (benchmarks/compare_embeddings.py: same ids, cosine >= 0.999 per row; written blind, run here
#      first); after the worker runs, the tensor path at batch 1,024;
#   3. `--preprocess pil` with 1, 4 and 8 worker processes feeding the GPU (WORKER_COUNTS), each
#      with its share of the cores' torch threads (pipelines/threads.py; the summary prints it),
#      then with W workers (W = cores / 2 by default): with one shared model (--large-model), and
#      with OpenMP's spinning waiters back (the suspected cause of 8 workers running slower than one);
#   4. a summary: embed rows/s beyond start-up against the forward-pair ceiling (target >= 0.6).
# Runs share a deadline (DEADLINE seconds, 540 by default: the device tool's 10-minute call): a run
# gets what is left, and is skipped when under a minute is.
#
# On this machine first:   bash benchmarks/fetch_gpu_wheels.sh      (fills .whl/, git-ignored)
# Then with the device tool, from the repo root, carry [".whl"]:
#   bash benchmarks/gpu_check.sh
# It installs the carried wheels (Beam and what the GPU image lacks) into /tmp/site, prints the
# versions it runs with, and writes $OUT/gpu-*.json and gpu-parity.txt (benchmarks/results/ without $OUT).
# DEVICE=cpu ROWS=64 rehearses it on a machine without a GPU (same install and code path); MODEL=one-layer
# BATCHES=16 make that rehearsal fit a busy 2-core machine.
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
WORKERS=${WORKERS:-$(( $(nproc) / 2 ))}
WORKER_COUNTS=${WORKER_COUNTS:-1 4 8}
BATCHES=${BATCHES:-256 1024}
MODEL=${MODEL:-vit-b-32}
mkdir -p "$OUTDIR"
timeout 150 python3 -m benchmarks.ceilings --device "$DEVICE" --model "$MODEL" --batch $BATCHES \
  --output "$OUTDIR/gpu-ceilings.json" || echo "ceilings failed or timed out"
DEADLINE=${DEADLINE:-540}
run() {  # name, embed args
  local left=$(( DEADLINE - SECONDS - 15 ))
  if (( left < 60 )); then echo "gpu check $1 skipped: ${left}s left of the ${DEADLINE}s deadline"; return; fi
  timeout $(( left < 200 ? left : 200 )) python3 -m benchmarks.bench --sections embed --model "$MODEL" --rows "$ROWS" --image-size 256 \
    --batch-size 256 --rows-per-group 1024 --device "$DEVICE" --repeat 1 --workdir /tmp/gpu-check \
    --embed-args "$2" --output "$OUTDIR/gpu-$1.json" || echo "gpu check $1 failed or timed out"
}
parity() {  # the bench's input embedded with decode-ahead on the default stream, then on a stream of its own
  local left=$(( DEADLINE - SECONDS - 15 )) mode
  if (( left < 60 )); then echo "gpu check parity skipped: ${left}s left"; return; fi
  for mode in on stream; do
    timeout $(( left / 2 )) python3 -m pipelines.cli -q embed --input /tmp/gpu-check/in --model /tmp/gpu-check/model \
      --output "/tmp/gpu-check/parity-$mode" --restart --batch-size 256 --preprocess tensor --decode-ahead "${mode/stream/$STREAM}" \
      --device "$DEVICE" || echo "gpu check parity: embed --decode-ahead $mode failed or timed out"
  done
  python3 -m benchmarks.compare_embeddings /tmp/gpu-check/parity-on /tmp/gpu-check/parity-stream \
    > "$OUTDIR/gpu-parity.txt" || true
  tail -1 "$OUTDIR/gpu-parity.txt" || true
}
# most wanted first: the deadline skips the last ones
run tensor "--preprocess tensor"
if [ "$DEVICE" = cpu ]; then  # a CPU rehearsal: stream needs CUDA, so rehearse the runs with "on" in its place
  STREAM=on
else
  STREAM=stream
fi
run tensor-stream "--preprocess tensor --decode-ahead $STREAM"
parity
for W in $WORKER_COUNTS; do  # the divided threads: each worker process gets cores / W torch threads
  run "pil-w$W" "--preprocess pil --direct_num_workers $W --direct_running_mode multi_processing"
done
MULTI="--preprocess pil --direct_num_workers $WORKERS --direct_running_mode multi_processing"
[[ " $WORKER_COUNTS " == *" $WORKERS "* ]] || run "pil-w$WORKERS" "$MULTI"
run "pil-w$WORKERS-large" "$MULTI --large-model"
OMP_WAIT_POLICY= run "pil-w$WORKERS-spin" "$MULTI"  # empty: the CLI leaves it, libgomp spins as by default
run tensor-b1024 "--preprocess tensor --batch-size 1024"  # the embed run's batch (the bare loop's stays 256)
run pil "--preprocess pil"
python3 - "$OUTDIR" "$WORKERS" $WORKER_COUNTS <<'PY'
import json, sys
from pathlib import Path
out, workers, counts = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
def load(name):
    p = out / f"gpu-{name}.json"
    return json.loads(p.read_text()) if p.exists() else None
ceil = load("ceilings")
print("== summary ==")
if ceil:
    print("gpu", ceil.get("gpu"), "| forward-pair ceiling", ceil["forward_pair_ceiling"], "rows/s")
names = ["tensor", "tensor-stream", "tensor-b1024", "pil", *(f"pil-w{w}" for w in counts)]
names += [n for n in (f"pil-w{workers}", f"pil-w{workers}-large", f"pil-w{workers}-spin") if n not in names]
for name in names:
    r = load(name)
    if not r or "embed" not in r:
        print(name, "no result")
        continue
    e = r["embed"]["embed"]
    rate = e["rows_per_s_beyond_startup"]
    label = "beyond start-up"
    if "-w" in name:  # unit time is summed over the worker processes: only the wall rate is the aggregate
        rate, label = e["rows_per_s_wall"], "wall, start-up included"
    share = f"{rate / ceil['forward_pair_ceiling']:.2f} of the ceiling" if ceil else ""
    print(f"{name:<10} {rate:>9,.1f} rows/s {label} ({e['rows_per_s_wall']:,.1f} wall) {share}; "
          f"host {e.get('host_us_per_row')} us/row; stages {e.get('stages_s')}; ahead {e.get('decode_ahead_s')}")
    threads = (e.get("runtime") or {}).get("threads") if isinstance(e.get("runtime"), dict) else None
    if threads:
        print(f"{'':<10} threads: {threads['threads']} a process ({threads['source']}: {threads['cores']} cores, "
              f"{threads['processes']} processes, {threads['engine']}), OMP_WAIT_POLICY={threads['wait_policy']}")
PY
