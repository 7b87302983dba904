#!/usr/bin/env bash
# The device check on a bare GPU machine (PyTorch and CUDA, none of our other dependencies): install the wheels
# carried in .whl/ (scripts/fetch_device_wheels.sh downloads them) into /tmp/site, then run benchmarks.gpu_check,
# stopped for good 60 s after its budget (it writes its reports after every stage, so a stop keeps what it measured).
#   bash benchmarks/gpu_check.sh OUT [--budget-s 420] [other benchmarks.gpu_check flags]
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT [flags]}
shift
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, diffusers, accelerate; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'diffusers', diffusers.__version__, 'accelerate', accelerate.__version__)"
PYTHONUNBUFFERED=1 timeout --kill-after=10 480 python3 -m benchmarks.gpu_check --out "$out" "$@"
