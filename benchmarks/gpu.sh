#!/usr/bin/env bash
# The GPU benchmark in one go, on a machine with a CUDA GPU and this repository checked out.
#
#   benchmarks/gpu.sh [benchmarks.gpu options]      # e.g. benchmarks/gpu.sh --docs 500000
#
# Uses .venv when its torch sees the GPU (a venv carried over from a CPU machine does not: it has the CPU
# build of torch). Otherwise it builds .venv-gpu with PyPI's default (CUDA) torch, which needs a package
# registry (`make` installs with constraints.txt, meant for CPU machines). Models and corpora are built offline.
# The whole script is bounded to 10 minutes; results land in .cache/bench/gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

cuda_ok() { [ -x "$1/bin/python" ] && "$1/bin/python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }

if cuda_ok .venv; then
    venv=.venv
elif cuda_ok .venv-gpu; then
    venv=.venv-gpu
else
    echo "gpu.sh: no venv with CUDA torch; building .venv-gpu (needs a package registry)" >&2
    python3 -m venv .venv-gpu
    .venv-gpu/bin/python -m pip install --quiet --upgrade pip
    .venv-gpu/bin/python -m pip install --quiet -e .
    venv=.venv-gpu
    cuda_ok "$venv" || { echo "gpu.sh: torch in .venv-gpu cannot see a GPU (nvidia-smi below)" >&2; nvidia-smi >&2 || true; exit 2; }
fi
echo "gpu.sh: using $venv ($("$venv/bin/python" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')), ready after $((SECONDS - started))s"
left=$((600 - (SECONDS - started)))
[ "$left" -ge 120 ] || left=120  # a slow venv build must not leave the benchmark no time at all
exec timeout --signal=INT --kill-after=20 "$left" "$venv/bin/python" -m benchmarks.gpu "$@"
