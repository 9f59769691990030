#!/usr/bin/env bash
# The GPU checks, as one prepared run for a task that is lent a device (about 8 minutes on an H200).
#
#   bash benchmarks/gpu_checks.sh                     # on the GPU machine, from the repository root
#   DEVICE=cpu bash benchmarks/gpu_checks.sh          # dry run of the same steps on a CPU (quick settings)
#
# Needs only python3 with torch, numpy, safetensors, pillow, tqdm and pytest (no install: the package is read
# from src/). Writes each step's log and table under $OUT (default /tmp/gpu_checks):
#   1. tests/test_cuda.py: every model's log-likelihood on the GPU equals the CPU's, cached sampling equals
#      naive sampling there, training runs and resumes in fp32 and bf16;
#   2. benchmarks.train_speed: PixelCNN++ small and paper size, fp32 / bf16 / compiled-bf16, with the
#      fraction of the GPU's measured matmul peak and the time of one CIFAR-10 epoch;
#   3. benchmarks.attention_speed: dense vs strided vs fixed attention, 16x16 to 64x64.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, go on whatever happens
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

if [ "$DEVICE" = cuda ]; then
    nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1
    speed=(--models pixelcnn_pp --sizes small paper --modes fp32 bf16 compiled-bf16 --compiled-configs all --reps 5)
    attn=()
else  # dry run: the same steps at CPU-sized settings
    speed=(--quick --models pixelcnn_pp --no-reference)
    attn=(--quick)
fi
step env 60 "$PY" -c "import torch, pixelar; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
    torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
step test_cuda 110 env PIXELAR_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step train_speed 270 "$PY" -m benchmarks.train_speed --device "$DEVICE" "${speed[@]}"
step attention_speed 100 "$PY" -m benchmarks.attention_speed --device "$DEVICE" "${attn[@]}"
