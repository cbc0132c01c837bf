#!/usr/bin/env bash
# Builds the LLaMA-Factory venv that tests/thirdparty runs (`make test` calls it; ~80 s here).
#   build_lf_venv.sh PYTHON VENV CONSTRAINTS
# LLaMA-Factory 0.9.5 resolves transformers 5.6.0, older than the main suite's, so it gets a
# venv of its own, with guardrun installed into it too (editable), as a user would have it.
# On failure it leaves VENV/BUILD-FAILED (the step and the end of pip's output) and exits 0:
# the rest of `make test` still runs, and tests/thirdparty skips, naming that file.
set -uo pipefail
python=$1 venv=$2 constraints=$3
log=$(mktemp)
trap 'rm -f "$log"' EXIT

step() {  # step DESCRIPTION COMMAND...: run it, or record why the venv could not be built
    local what=$1; shift
    if ! "$@" >"$log" 2>&1; then
        { echo "step failed: $what"; echo "command: $*"; tail -n 40 "$log"; } >"$venv/BUILD-FAILED"
        echo "make: the LLaMA-Factory venv could not be built ($what): see $venv/BUILD-FAILED;" \
             "tests/thirdparty will be skipped" >&2
        exit 0
    fi
}

rm -rf "$venv"
mkdir -p "$venv"
start=$(date +%s)
step "create the venv" "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
# torch first, alone: 2.13.0 is the CPU wheel on this disk; later installs keep it (constraints).
step "install torch" "${pip[@]}" -c "$constraints" torch
step "install llamafactory" "${pip[@]}" -c "$constraints" llamafactory
step "install guardrun" "${pip[@]}" -c "$constraints" -e .
# The registry's torchvision/torchaudio wheels beside CPU torch 2.13 are CUDA builds that fail to
# load. torchvision is optional for transformers and LLaMA-Factory: removed. torchaudio is
# imported unconditionally (llamafactory/data/mm_plugin.py), used only for audio data: its CUDA
# extension is removed, and the rest imports (no audio data here).
step "remove torchvision" "$venv/bin/python" -m pip uninstall -y -q torchvision
step "remove torchaudio's CUDA extension" \
    find "$venv/lib" -path '*/site-packages/torchaudio/lib/*.so' -delete
step "import LLaMA-Factory" "$venv/bin/python" -c "import torchaudio, llamafactory.data.mm_plugin, llamafactory.train.tuner"
step "llamafactory-cli" "$venv/bin/llamafactory-cli" version
echo "built $venv in $(( $(date +%s) - start )) s" >"$venv/.built"
