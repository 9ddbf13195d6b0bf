#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has torch, torchvision, transformers,
# pyarrow, fsspec, pillow, safetensors; Python 3.12, no network) into .whl/ for the device tool.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
for pkg in apache-beam==2.77.0 fastavro fasteners grpcio protobuf proto-plus objsize orjson jsonpickle \
           httplib2 pydot cloudpickle crcmod dill zstandard sortedcontainers pytz python-dateutil regex \
           pymongo dnspython beartype typing-extensions requests urllib3 idna certifi charset-normalizer; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl "$pkg" \
    || echo "could not fetch $pkg"
done
du -sh .whl
