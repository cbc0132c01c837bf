"""bench/kernelcap.py: the real kernel OOM killer inside a memory cgroup of the pretend
machine's size, which bench/scenarios.py runs torchrun and guardrun in (issue 17 §6).

For real where the cgroup v1 memory hierarchy is writable (root here): a process that
touches more than the cap is OOM-killed by the kernel inside the cgroup, the kill is
counted, and close() leaves no cgroup. Where no hierarchy is writable, scenarios.py runs
the stand-in (bench/oomkiller.py) and says why.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import kernelcap  # noqa: E402
import scenarios  # noqa: E402
from oomkiller import OomKiller  # noqa: E402

MIB = 1 << 20
# Touch `mb` MiB page by page, then say so (a process the cap lets live prints "held").
HOG = "import sys\nheld = bytearray(int(sys.argv[1]) << 20)\nfor i in range(0, len(held), 4096):\n" \
      "    held[i] = 1\nprint('held', flush=True)\n"


@pytest.mark.skipif(bool(kernelcap.why_not()), reason=f"no kernel cap here: {kernelcap.why_not()}")
def test_the_kernel_kills_inside_the_cap_and_close_leaves_nothing():
    cap = kernelcap.KernelCap(64 * MIB)
    path = cap.group.path
    assert cap.group.limit() == 64 * MIB
    try:
        small = subprocess.run([sys.executable, "-c", HOG, "8"], preexec_fn=cap.preexec,
                               capture_output=True, text=True, timeout=60)
        assert (small.returncode, small.stdout) == (0, "held\n")  # under the cap: untouched
        cap.start()
        big = subprocess.run([sys.executable, "-c", HOG, "256"], preexec_fn=cap.preexec,
                             capture_output=True, text=True, timeout=60)
        assert big.returncode == -9 and "held" not in big.stdout  # the kernel's SIGKILL
    finally:
        left = cap.close()
    assert left == [] and not path.exists()
    assert cap.kills == 1
    assert 8 * MIB <= cap.peak <= 64 * MIB


def test_without_a_writable_hierarchy_the_stand_in_runs_and_says_why(tmp_path, monkeypatch):
    why = kernelcap.why_not(tmp_path / "no-memory-hierarchy")
    assert why == f"no cgroup v1 memory hierarchy at {tmp_path / 'no-memory-hierarchy'}"
    monkeypatch.setattr(kernelcap, "why_not", lambda: why)
    notes: list[str] = []
    cap = scenarios.memory_cap(SimpleNamespace(capacity=64 * MIB), notes)
    assert isinstance(cap, OomKiller)
    assert notes == [f"no kernel OOM killer here ({why}): the stand-in ran"]
