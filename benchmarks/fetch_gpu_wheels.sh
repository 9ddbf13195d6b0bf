#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks into .whl/ (git-ignored) for the device tool.
#
# The GPU image (Python 3.12, no network) has torch, torchvision, transformers, pyarrow, numpy,
# pillow, fsspec and safetensors, but no Apache Beam. pip resolves Beam's own pins for cp312
# (so protobuf < 7, objsize < 0.8, beartype < 0.23 ... as Beam asks, not the newest); the
# image's numpy, pyarrow and pillow are kept (they are large, and torch was built against that
# numpy), although Beam's metadata pins them lower: rehearsed with numpy 2.5.2, pyarrow 26.0.1
# and pillow 13.0.0 (`DEVICE=cpu ROWS=64 bash benchmarks/gpu_check.sh` in a Python 3.12 venv
# holding the image's versions). About 44 MB; the device tool carries at most 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
# shellcheck disable=SC2086
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl apache-beam==2.77.0
rm -f .whl/numpy-*.whl .whl/pyarrow-*.whl .whl/pillow-*.whl
du -sh .whl
