"""Shared by tests/thirdparty: the LLaMA-Factory venv, its tiny offline job, and how to judge it.

Each case runs `guardrun run` from the LLaMA-Factory venv (guardrun is installed there too, as
a user would have it) on a `launcher: command` recipe whose command is `llamafactory-cli train
cfg.yaml`, the venv's bin first on PATH (llamafactory-cli starts `torchrun` from PATH when
FORCE_TORCHRUN is set). Verdicts come from LLaMA-Factory's own record: `trainer_state.json` of a
checkpoint, `trainer_log.jsonl` (one line per logged step, appended across attempts) and its log
lines, plus guardrun's exit code and journal.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO

LF_VENV = Path(os.environ.get("GUARDRUN_LF_VENV", REPO / ".venv-lf"))
BIN = LF_VENV / "bin"
HERE = Path(__file__).resolve().parent
SHIM = HERE / "lf_shim"          # test-only knobs (ballast, stall in save): see its docstring


def venv_or_skip(venv: Path = LF_VENV) -> None:
    """Skip, saying why, unless `make test` built the venv (build_lf_venv.sh)."""
    if (venv / ".built").is_file() and (venv / "bin" / "llamafactory-cli").is_file():
        return
    failed = venv / "BUILD-FAILED"
    if failed.is_file():
        first = failed.read_text(errors="replace").splitlines()[:1] or ["?"]
        pytest.skip(f"the LLaMA-Factory venv could not be built ({first[0]}): see {failed}")
    pytest.skip(f"no LLaMA-Factory venv at {venv}: `make test` builds it (make {venv}/.built)")


def build_tiny(root: Path) -> Path:
    """The tiny Llama, tokenizer and alpaca rows (tiny_llama.py), built by the venv's transformers."""
    done = subprocess.run([str(BIN / "python"), str(HERE / "tiny_llama.py"), str(root)],
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return root


def lf_config(tmp_path: Path, tiny: Path, **changes) -> Path:
    """A LoRA SFT config for LLaMA-Factory on the tiny model (`changes` replace or add keys;
    a value None drops the key). overwrite_output_dir stays false: LLaMA-Factory keeps
    trainer_log.jsonl, and guardrun passes resume_from_checkpoint."""
    config = {
        "model_name_or_path": str(tiny / "model"), "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_rank": 8, "lora_target": "all",
        "dataset": "tiny_alpaca", "dataset_dir": str(tiny / "data"), "template": "empty",
        "cutoff_len": 64, "output_dir": str(tmp_path / "out"), "logging_steps": 1,
        "save_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-3, "max_steps": 8, "report_to": "none", "seed": 42,
    }
    config.update(changes)
    path = tmp_path / "lf_sft.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items() if v is not None))
    return path


def lf_recipe(tmp_path: Path, tiny: Path, config: Path, *, ranks: int, env: dict | None = None,
              extra: str = "", restarts: str = "{max: 2, backoff: [0.1s, 0.2s]}") -> Path:
    """guardrun's recipe for `llamafactory-cli train CONFIG` with `ranks` processes: through
    its own torchrun (FORCE_TORCHRUN=1, NPROC_PER_NODE from the rung) when ranks > 1."""
    job_env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tiny / "hf"), "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": str(SHIM), **(env or {})}
    if ranks > 1:
        job_env["FORCE_TORCHRUN"] = "1"
    path = tmp_path / "job.yaml"    # the job's name, "job", is what helpers_extbuild.events reads
    path.write_text(textwrap.dedent(f"""\
        workdir: {tmp_path}
        launcher: command
        command: [llamafactory-cli, train, {config}]
        args_style: key=value
        ranks_env: NPROC_PER_NODE
        env: {json.dumps(job_env)}
        gpus: {ranks}
        batch: {{per_device: 2, grad_accum: 1, per_device_arg: per_device_train_batch_size,
                grad_accum_arg: gradient_accumulation_steps}}
        checkpoints: {{dir: {tmp_path / 'out'}, resume_arg: resume_from_checkpoint}}
        monitor: {{interval: 0.25}}
        stop_grace: 10s
        restarts: {restarts}
        """) + textwrap.dedent(extra))
    return path


def run_guardrun(recipe: Path, timeout: float,
                 on_line: Callable[[str], None] | None = None) -> tuple[int, str]:
    """`guardrun run RECIPE` from the venv; each output line goes to `on_line` as it comes."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    guard = subprocess.Popen([str(BIN / "guardrun"), "run", str(recipe)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []

    def read():
        for line in guard.stdout:
            lines.append(line)
            if on_line:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = guard.wait(timeout)
    finally:
        if guard.poll() is None:
            guard.kill()
            guard.wait()
        reader.join(10)
    return code, "".join(lines)


def trainer_log(tmp_path: Path) -> list[int]:
    """The training steps in LLaMA-Factory's trainer_log.jsonl, in the order it logged them
    (the line of the end-of-training summary, which repeats the last step, has no loss)."""
    text = (tmp_path / "out" / "trainer_log.jsonl").read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [entry["current_steps"] for entry in entries if "loss" in entry]


def trainer_state(tmp_path: Path, step: int) -> dict:
    return json.loads((tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json").read_text())


def attempt_log(state_dir: Path, attempt: int) -> str:
    return (state_dir / "job" / "attempts" / str(attempt) / "output.log").read_text()


def lf_launch(state_dir: Path, attempt: int) -> dict[str, int]:
    """How LLaMA-Factory and its Trainer say attempt N ran: world size, accumulation, batch."""
    text = attempt_log(state_dir, attempt)
    found = {
        "world_size": re.search(r"Process rank: 0, world size: (\d+)", text),
        "grad_accum": re.search(r"Gradient Accumulation steps = (\d+)", text),
        "global_batch": re.search(r"Total train batch size \(w\. parallel, distributed & accumulation\) = (\d+)", text),
    }
    assert all(found.values()), text[-3000:]
    return {key: int(match.group(1)) for key, match in found.items()}
