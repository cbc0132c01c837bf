"""Two field situations on real LLaMA-Factory, for bench/scenarios.py: host OOM at 2 ranks, death in a save.

LLaMA-Factory 0.9.5 from tests/thirdparty's venv (.venv-lf, `make .venv-lf/.built`), LoRA SFT of
its tiny offline Llama (tiny_llama.py; config and recipe from lf_helpers.py), 2 CPU gloo ranks
through its own torchrun launch, 12 steps, micro-batch 2 x 2 ranks = global batch 4:

  lf_host_oom   each rank's ballast ramps 40 MiB a step to 400 MiB (step 10), 0.3 s a step;
                checkpoints every 4 steps. Measured here (RssAnon of the whole tree, cli front,
                torchrun agent and ranks): 2 ranks ~1.2 GiB + ballast, 2.0 GiB at step 12;
                1 rank 1.2 GiB at step 12. The pretend machine (a memory cgroup, the
                kernel's OOM killer; bench/oomkiller.py where none can be made) holds
                1800 MiB: 2 ranks pass it near step 7 (after checkpoint-4), guardrun's
                `host_memory: 1640MiB` near step 5.5; a 2-rank resume from checkpoint-4 is
                back over it 3 steps later.
  lf_save_died  checkpoints every 3; rank 0 hangs writing checkpoint-6/trainer_state.json
                (the Trainer writes it last) and the bench SIGKILLs it.

(a) torchrun: `FORCE_TORCHRUN=1 NPROC_PER_NODE=2 MAX_RESTARTS=3 RDZV_ID=bench llamafactory-cli
    train cfg.yaml`. LLaMA-Factory's launcher (launcher.py, 0.9.5) passes `--max-restarts
    $MAX_RESTARTS` to torchrun only in its elastic launch, which RDZV_ID turns on (c10d
    rendezvous); without it, torchrun runs with no restarts. On each restart LLaMA-Factory
    resumes by itself from transformers' get_last_checkpoint(output_dir). Only with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (bench/scenarios.py's UNSHARED): as shipped, its
    restarts fail here as the HF rows show (measured once on lf_host_oom: round 2 died in gloo's
    connectFullMesh, "Connection refused", round 3 hung until the bench's timeout), and the
    rows would only repeat that; with it, the rows show what the restarts themselves do.
(b) guardrun: tests/thirdparty's `launcher: command` recipe (`llamafactory-cli train cfg.yaml`,
    ranks_env NPROC_PER_NODE, FORCE_TORCHRUN=1), the default ladder, restarts {max: 3}.

Both runners get bench/lf_shim on the job's PYTHONPATH: tests/thirdparty's test shim (ballast,
stall) and a fix for the upstream CPU-only bug that fails every 2-rank CPU resume (see its
docstring); without it neither runner could ever resume at 2 ranks on this machine.
Judged, like the HF rows, from the trainer's own output and files (trainer_state.json,
trainer_log.jsonl): bench/trainlog.py with LF_MARKS.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trainlog
from scenarios import MIB, REPO, TORCHRUN_UNSHARED, UNSHARED, Row, Scenario, judge_guardrun, judge_torchrun, run

sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "thirdparty")]
from lf_helpers import BIN, LF_VENV, build_tiny, lf_config, lf_recipe  # after the path: tests/thirdparty

SHIM = REPO / "bench" / "lf_shim"
MAX_STEPS, RANKS = 12, 2
RESTARTS = 3


@dataclass(frozen=True)
class LfScenario(Scenario):
    env: dict = field(default_factory=dict)   # the shim's knobs (LF_TEST_*)


SCENARIOS = (
    LfScenario("lf_host_oom", "LLaMA-Factory: host memory too high at 2 ranks (resume spike)", "host_oom",
               knobs={"save_steps": 4}, limits="{host_memory: 1640MiB, hard_memory: off}", capacity=1800 * MIB,
               env={"LF_TEST_BALLAST_MB": "400", "LF_TEST_BALLAST_RAMP_STEPS": "10",
                    "LF_TEST_STEP_SECONDS": "0.3"},
               torchrun_right=lambda cause: "SIGKILL" in cause or "exitcode -9" in cause),
    LfScenario("lf_save_died", "LLaMA-Factory: death during checkpoint save", "save_failed",
               knobs={"save_steps": 3}, kill_stall=True, env={"LF_TEST_STALL_SAVE_AT": "6"},
               torchrun_right=lambda cause: bool(re.search(r"save|checkpoint", cause, re.IGNORECASE))),
)


def missing() -> str | None:
    """Why these scenarios cannot run here, or None."""
    if (LF_VENV / ".built").is_file() and (BIN / "llamafactory-cli").is_file():
        return None
    return f"no LLaMA-Factory venv at {LF_VENV}: `make {LF_VENV.name}/.built` builds it"


@functools.cache
def tiny(base: Path) -> Path:
    """The tiny model and data, built once per bench run (~5 s)."""
    return build_tiny(base / "lf-tiny")


def job_env(scenario: LfScenario) -> dict:
    """What both runners give the job: offline, the bench shim and the scenario's knobs."""
    return {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(SHIM),
            "LF_BENCH_CPU_RESUME": "1", **scenario.env}


def prepare(scenario: LfScenario, work: Path) -> tuple[Path, Path]:
    """The run's folder (BASE/scenario/runner) and LLaMA-Factory config (output dir work/out);
    returns the config and the tiny model's folder (BASE/lf-tiny)."""
    work.mkdir(parents=True)
    model = tiny(work.parent.parent)
    return lf_config(work, model, max_steps=MAX_STEPS, **scenario.knobs), model


def with_venv(env: dict) -> dict:
    """The bench's environment with the venv's bin first (llamafactory-cli runs `torchrun` from PATH)."""
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}


def run_torchrun(scenario: LfScenario, work: Path, timeout: float) -> Row:
    config, model = prepare(scenario, work)
    env = with_venv({**os.environ, **job_env(scenario), "HF_HOME": str(model / "hf"),
                     "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(RANKS), "MAX_RESTARTS": str(RESTARTS),
                     "RDZV_ID": "bench", "PYTHONUNBUFFERED": "1", UNSHARED: "1",
                     "LOGLEVEL": "INFO"})  # the agent's "Rendezvous complete" line counts its rounds
    notes: list[str] = []
    ran = run([str(BIN / "llamafactory-cli"), "train", str(config)], env, scenario, timeout, notes)
    return judge_torchrun(scenario, TORCHRUN_UNSHARED, ran, notes, work, trainlog.LF_MARKS, MAX_STEPS)


def run_guardrun(scenario: LfScenario, work: Path, timeout: float) -> Row:
    config, model = prepare(scenario, work)
    limits = f"limits: {scenario.limits}\n" if scenario.limits else ""
    recipe = lf_recipe(work, model, config, ranks=RANKS, env=job_env(scenario),
                       extra=limits, restarts=f"{{max: {RESTARTS}, backoff: [1s, 10s]}}")
    state = work / "state"
    notes: list[str] = []
    ran = run([str(BIN / "guardrun"), "run", str(recipe)], with_venv({**os.environ, "GUARDRUN_STATE_DIR": str(state)}),
              scenario, timeout, notes)
    return judge_guardrun(scenario, ran, notes, work, state / "job", trainlog.LF_MARKS, MAX_STEPS)


RUNNERS = (("torchrun-unshared", run_torchrun), ("guardrun", run_guardrun))
