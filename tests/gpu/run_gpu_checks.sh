#!/usr/bin/env bash
# guardrun's GPU checks, runnable as is on a machine with one (or more) NVIDIA GPU:
#   - NVML sees a real torch process; its memory is waited for after a kill;
#   - an orphaned worker that still holds /dev/nvidia* is named;
#   - a torch job growing VRAM past limits.vram is stopped (cuda_oom), reaction time printed;
#   - a real CUDA OOM is classified cuda_oom, the ladder halves the micro-batch, the job finishes;
#   - NVML's process queries (_v3, _v2, v1) read the same entries; with _v3 (then _v2) hidden,
#     guardrun and doctor fall back and still see the job (test_nvml_fallback_real.py).
# Needs guardrun installed (pip install -e .), torch with CUDA, pytest. PYTHON picks the interpreter.
set -u
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python}"
if ! "$PY" -c "import pynvml; pynvml.nvmlInit()" 2>/dev/null; then
    echo "run_gpu_checks: NVML cannot initialise: no NVIDIA GPU or driver here" >&2
    exit 1
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.used,memory.total --format=csv
fi
"$PY" -m pytest -v -s -p no:cacheprovider -m gpu tests/gpu "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "run_gpu_checks: pytest collected no test" >&2; fi
exit "$rc"
