#!/usr/bin/env bash
# The checks that need a GPU, in one go (under 8 minutes on one H200): the tests marked `gpu`, then training,
# scoring and serving on the device at 1x28x28 and 3x64x64, fp32 and bf16, into docs/benchmarks/gpu.md.
#
#   bash scripts/gpu_check.sh            # on a machine with CUDA, after scripts/setup.sh (or with a python3 that
#                                        # has torch and this project's requirements; PY=... picks another)
# On a machine without CUDA it says so in one line and exits 1.
# On the device tool's machine (python3 there has torch, grpcio, protobuf, prometheus-client, safetensors, tqdm,
# matplotlib, pytest; not grpcio-tools, grpcio-health-checking, grpcio-reflection): generate the protos here and
# carry them with the two pure-Python wheels --
#   here:  echo /.whl/ >> .git/info/exclude; .venv/bin/pip download --no-deps -d .whl \
#            grpcio-health-checking==$(.venv/bin/pip show grpcio-health-checking | sed -n 's/^Version: //p') \
#            grpcio-reflection==$(.venv/bin/pip show grpcio-reflection | sed -n 's/^Version: //p')
#   run:   carry [".whl", "detector/v1"], command: python3 -m pip install -q --no-index --no-deps --target /tmp/site
#            .whl/*.whl && PYTHONPATH=/tmp/site:. bash scripts/gpu_check.sh; cp docs/benchmarks/gpu.* $OUT/
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing to check" >&2
    exit 1
fi
[ -f detector/v1/detector_pb2.py ] || PY="$PY" bash scripts/gen_protos.sh
export PYTHONUNBUFFERED=1
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(), "torch", torch.__version__, "GPUs:", torch.cuda.device_count())'
"$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider
timeout 420 "$PY" scripts/bench_device.py "$@"
echo "gpu_check: done; results in docs/benchmarks/gpu.md"
