"""Test-only shim for LLaMA-Factory runs: the knobs tests/trainers/hf_lora_train.py has, without
touching LLaMA-Factory's code. Nothing here changes what LLaMA-Factory computes or saves.

The tests put this folder on the job's PYTHONPATH, so every Python process of the job (the
`llamafactory-cli` front, its torchrun, each rank) imports it at start-up. It does nothing
unless one of these is set in the environment:

* ``LF_TEST_BALLAST_MB=N``, ``LF_TEST_BALLAST_RAMP_STEPS=K``, ``LF_TEST_STEP_SECONDS=T``: every
  rank holds host memory ramping to N MiB by global step K and sleeps T s after each optimizer
  step (hf_lora_train's BallastCallback, added to every Trainer's callbacks), so that 2 ranks
  cross a memory limit one rank stays under, a few steps in, after a checkpoint exists.
  (A tiny Llama's step takes ~15 ms on CPU: without the sleep a run ends before a 0.25 s
  monitor sees it grow.)
* ``LF_TEST_STALL_SAVE_AT=S``: on the first attempt (``GUARDRUN_ATTEMPT`` 1), the rank that writes
  ``checkpoint-S/trainer_state.json`` (the Trainer writes it last) prints ``[lf_shim] stalling in
  save of checkpoint-S (pid P)`` and hangs there, the weights and optimizer already written, so a
  test can SIGKILL it mid-save the way the kernel's OOM killer would.

How: a meta-path finder runs transformers.trainer_callback's own loader, then patches the
module (CallbackHandler.__init__, TrainerState.save_to_json) before anyone uses it.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from pathlib import Path

TARGET = "transformers.trainer_callback"
TRAINERS = Path(__file__).resolve().parents[2] / "trainers"   # tests/trainers: hf_lora_train.py


def _float(name: str) -> float:
    try:
        return float(os.environ.get(name, "0"))
    except ValueError:
        return 0.0


def _patch(module) -> None:
    sys.path.insert(0, str(TRAINERS))
    import hf_lora_train as knobs   # torch and transformers are loaded by now

    ballast_mb, step_seconds = _float("LF_TEST_BALLAST_MB"), _float("LF_TEST_STEP_SECONDS")
    ramp = int(_float("LF_TEST_BALLAST_RAMP_STEPS") or 10)
    if ballast_mb > 0 or step_seconds > 0:
        init = module.CallbackHandler.__init__

        def with_ballast(self, callbacks, *args, **kwargs):
            extra = knobs.BallastCallback(knobs.Ballast(ballast_mb, ramp), step_seconds)
            init(self, list(callbacks) + [extra], *args, **kwargs)

        module.CallbackHandler.__init__ = with_ballast
    stall_at = int(_float("LF_TEST_STALL_SAVE_AT") or -1)
    if stall_at >= 0 and knobs.attempt_number() <= 1:
        save = module.TrainerState.save_to_json

        def stalling(self, json_path):
            if Path(json_path).parent.name == f"checkpoint-{stall_at}":
                print(f"[lf_shim] stalling in save of checkpoint-{stall_at} (pid {os.getpid()})", flush=True)
                while True:
                    time.sleep(1)
            return save(self, json_path)

        module.TrainerState.save_to_json = stalling


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds TARGET the normal way and patches it right after its own code ran."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if any(os.environ.get(k) for k in ("LF_TEST_BALLAST_MB", "LF_TEST_STEP_SECONDS", "LF_TEST_STALL_SAVE_AT")):
    sys.meta_path.insert(0, _PatchAfterImport())
