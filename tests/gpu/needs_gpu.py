"""What every real-GPU test module starts with: skip unless NVML and torch's CUDA both work.

    from needs_gpu import GUARDRUN, pytestmark  # noqa: F401 (pytest reads pytestmark)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guardrun.supervisor.watch.gpu import open_gpu_source


def _cuda_ready() -> str:
    """Why the GPU tests cannot run here, or "" when they can."""
    source, why = open_gpu_source()
    if source is None:
        return why
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
    return "" if probe.stdout.strip() == "True" else "torch has no CUDA here"


SKIP = _cuda_ready()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(SKIP), reason=f"needs an NVIDIA GPU ({SKIP})")]
_SIBLING = Path(sys.executable).parent / "guardrun"
GUARDRUN = str(_SIBLING) if _SIBLING.exists() else shutil.which("guardrun") or "guardrun"
