"""Bench-only shim for the LLaMA-Factory scenarios: the test shim, plus one upstream CPU fix.

bench/lf_scenarios.py puts this folder on the job's PYTHONPATH instead of tests/thirdparty/lf_shim.
It runs that test shim (ballast, step sleep, a stall in one save: see its docstring) as it is,
then, with ``LF_BENCH_CPU_RESUME=1``, works around the upstream CPU-only bug of FIELD_NOTES:
transformers 5.6 under CPU DDP resumes ``optimizer.pt`` with ``map_location=args.device``
(``cpu:0``), which ``torch.load`` rejects ("don't know how to restore data location ...
(tagged with cpu:0)"), so every 2-rank CPU resume fails. On a GPU machine that resume works;
the bench measures the restarts, not this bug, so both runners get the fix: a ``torch.load``
given a CPU device with an index loads to plain ``"cpu"``. Nothing else changes.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

TEST_SHIM = Path(__file__).resolve().parents[2] / "tests" / "thirdparty" / "lf_shim" / "sitecustomize.py"


def _run_test_shim() -> None:
    spec = importlib.util.spec_from_file_location("_lf_test_shim", TEST_SHIM)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)


def _cpu(location):
    """'cpu:0' or torch.device('cpu', 0) -> 'cpu'; anything else as it is."""
    text = str(location) if location is not None else ""
    return "cpu" if text.startswith("cpu:") else location


class _FixCpuLoad(importlib.abc.MetaPathFinder):
    """Wraps torch.serialization.load right after that module ran (torch/__init__ then
    re-exports the wrapped one as torch.load)."""

    def find_spec(self, name, path, target=None):
        if name != "torch.serialization":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            load = module.load

            def load_on_cpu(*args, map_location=None, **kwargs):
                return load(*args, map_location=_cpu(map_location), **kwargs)

            module.load = load_on_cpu

        spec.loader.exec_module = exec_module
        return spec


_run_test_shim()
if os.environ.get("LF_BENCH_CPU_RESUME") == "1":
    sys.meta_path.insert(0, _FixCpuLoad())
