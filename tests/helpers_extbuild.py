"""Shared by the extension-build fault tests: guardrun on tests/jobs/ext_compile.py."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

GUARDRUN = str(Path(sys.executable).parent / "guardrun")
EXT_COMPILE = REPO / "tests" / "jobs" / "ext_compile.py"


def events(state_dir: Path, name: str) -> list[dict]:
    lines = (state_dir / "job" / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == f"guardrun.{name}"]


def start_compile_job(tmp_path: Path, ext: Path, *sources: str) -> tuple[subprocess.Popen, Path]:
    """guardrun on a job whose fake cc1plus, once `go` exists, crosses a 200 MiB limit."""
    go = tmp_path / "go"
    extra = "".join(f', --source, "{s}"' for s in sources)
    recipe = tmp_path / "job.yaml"
    recipe.write_text(textwrap.dedent(f"""
        launcher: python
        script: {EXT_COMPILE}
        args: [--bin, "{tmp_path / 'bin'}", --go, "{go}", --compile-mb, "300"{extra}]
        env: {{TORCH_EXTENSIONS_DIR: "{ext}"}}
        limits: {{host_memory: 200MiB, hard_memory: "off"}}  # guardrun's own stop, not the kernel's
        monitor: {{interval: 0.1}}
        stop_grace: 5s
        ladder: []
        """))
    with open(tmp_path / "out.txt", "wb") as out:
        guard = subprocess.Popen([GUARDRUN, "run", str(recipe)], stdout=out, stderr=subprocess.STDOUT)
    return guard, go


def finish(guard: subprocess.Popen, tmp_path: Path) -> str:
    """Wait for guardrun to exit (killed after 60 s); what it printed."""
    try:
        guard.wait(60)
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
    return (tmp_path / "out.txt").read_text()
