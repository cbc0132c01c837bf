"""The five field situations, each run under torchrun alone and under guardrun, same machine, same run.

Every run is the real HF Trainer test script (tests/trainers/hf_lora_train.py: tiny random
Llama + PEFT LoRA) on 2 CPU ranks, 12 steps, a checkpoint every 3, global batch 8
(micro-batch 4 x 2 ranks). Each fault comes from the trainer's knobs (its docstring):

  host_oom    ballast grows with the step; more than the (pretend) machine holds at 2 ranks,
              and a resume at 2 ranks takes it back at once. The machine: each runner's whole
              command in a memory cgroup of its size, the kernel's own OOM killer inside
              (bench/kernelcap.py), where cgroup v1 memory is writable; else the stand-in
              bench/oomkiller.py; the notes under the table say which ran. guardrun's recipe
              has `hard_memory: off`: its own kernel backstop (host_memory + 10%, below the
              machine) would otherwise be what the comparison measures, not its graceful limit
  save_died   rank 0 hangs in the save of checkpoint-6 before trainer_state.json; the bench
              SIGKILLs it, as the OOM killer kills a save's memory spike
  cuda_oom    torch.OutOfMemoryError (CUDA's message) above micro-batch 2
  nan_loss    loss NaN from step 7 while the learning rate is above 1e-4 (it is 2e-4)
  user_error  rank 1 alone cannot open its data shard (bench/jobs/sharded_lora_train.py)
  host_oom_2nodes  issue 16: the job on two "nodes" of this machine, 2 ranks each (world 4), one
              process per node (two torchruns on a static rendezvous at 127.0.0.1; two
              guardruns, `--node-rank 0/1`, one shared_dir); node 1 alone is the pretend machine
              of host_oom (its memory cgroup; its guardrun's `limits.host_memory` given on its
              command line), node 0 is unbounded. Judged from node 0's output (global rank 0).

(a) torchrun: `torchrun --standalone --nproc-per-node 2 --max-restarts 3 ... --resume_from_checkpoint
    last` (the trainer resumes from transformers' get_last_checkpoint, as LLaVA's train.py does by
    itself), as shipped; and where it restarts, again with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1,
    which works around its restarts' gloo failure (see UNSHARED below), to show what torchrun's
    restarts do when they work.
(b) guardrun: a recipe with the same script and flags, the default ladder, restarts {max: 3}, and
   `success: {regex: 'finished at step'}` (the trainer's last line), as a user would write.
A run still going after --timeout seconds is stopped by the bench and counted as hung.

Beside them, bench/lf_scenarios.py runs host_oom and save_died on real LLaMA-Factory 0.9.5
(lf_host_oom, lf_save_died: its own torchrun launch with MAX_RESTARTS=3, and guardrun), when
tests/thirdparty's venv .venv-lf exists (skipped, saying so, when it does not).

Judged from the trainer's own output and files for both (bench/trainlog.py), including "steps
past target": the highest global step the trainer reached or recorded, less max_steps. Exits 1
if any process of a run is left after it (the results themselves are reported as they are).

    python bench/scenarios.py [--only host_oom,lf_host_oom] [--timeout 90] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import kernelcap
import trainlog
from kernelcap import KernelCap
from oomkiller import OomKiller
from tagged import Ran, run_tagged

from guardrun.supervisor.run.loop import free_port

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GUARDRUN = str(Path(sys.executable).parent / "guardrun")
TRAINER = REPO / "tests" / "trainers" / "hf_lora_train.py"
SHARDED = REPO / "bench" / "jobs" / "sharded_lora_train.py"
MIB = 1 << 20

MAX_STEPS = 12
COMMON = {"use_cpu": True, "report_to": "none", "max_steps": MAX_STEPS, "save_steps": 3,
          "logging_steps": 1, "step_seconds": 0.2}
PER_DEVICE, RANKS = 4, 2
# torch 2.13's torchrun shares its rendezvous TCPStore with the workers across restarts; the
# process group keys of the last round are still there, so a restarted gloo group connects to
# the dead ranks' ports ("Connection refused") and fails or hangs in init_process_group. This
# variable (torch's own opt-out) gives each round a fresh store: torchrun's restarts then work.
UNSHARED = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
TORCHRUN_UNSHARED = f"torchrun, {UNSHARED}=1"
# hf_lora_train: "stalling in save of checkpoint-6 before trainer_state.json (pid P)"; lf_shim: no "before"
STALL = re.compile(r"stalling in save of checkpoint-\d+ (?:before \S+ )?\(pid (\d+)\)")


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    expect: str                     # guardrun's kind for this failure; "success" for the reference
    knobs: dict = field(default_factory=dict)
    lr: float = 2.0e-4
    script: Path = TRAINER
    limits: str = ""                # guardrun recipe `limits:` (flow mapping)
    capacity: int | None = None     # the pretend machine's memory for the job (OomKiller)
    kill_stall: bool = False        # SIGKILL the rank that stalls in a save
    shards: tuple[int, ...] = ()    # data shards to write (sharded_lora_train.py)
    restarts: bool = True           # torchrun restarts here (not for the reference, not for a NaN)
    can_finish: bool = True         # False: the job cannot finish (the right end is to stop at once)
    torchrun_right: Callable[[str], bool] = lambda cause: False
    nodes: int = 1                  # > 1: one runner process per node; the last is the capped one
    node_overrides: tuple[str, ...] = ()  # guardrun's KEY=VALUE for the capped node alone


SCENARIOS = (
    Scenario("reference", "no fault (reference)", "success", restarts=False,
             torchrun_right=lambda cause: cause == "none (exit 0)"),
    # One rank is ~216 MiB anonymous before its ballast, the torchrun agent ~146 MiB, guardrun
    # ~45 MiB. Ballast 1400 MiB over 12 steps (117 MiB/step/rank): 2 ranks pass the 2.5 GiB
    # machine at step 9, guardrun's 2 GiB limit at step 7; 1 rank peaks near 1.8 GiB.
    Scenario("host_oom", "host memory too high at 2 ranks (resume spike)", "host_oom",
             knobs={"ballast_mb": 1400, "ballast_ramp_steps": 12},
             limits="{host_memory: 2GiB, hard_memory: off}", capacity=2560 * MIB,
             torchrun_right=lambda cause: "SIGKILL" in cause or "exitcode -9" in cause),
    Scenario("save_died", "death during checkpoint save", "save_failed",
             knobs={"stall_in_save_at": 6}, kill_stall=True,
             torchrun_right=lambda cause: bool(re.search(r"save|checkpoint", cause, re.I))),
    Scenario("cuda_oom", "CUDA OOM above micro-batch 2", "cuda_oom",
             knobs={"oom_above_batch": 2},
             torchrun_right=lambda cause: bool(re.search(r"out of memory|OutOfMemory", cause, re.I))),
    Scenario("nan_loss", "NaN from step 7 at lr 2e-4", "nan_loss",
             knobs={"nan_at_step": 7, "nan_lr_above": 1.0e-4, "logging_nan_inf_filter": False}, restarts=False,
             torchrun_right=lambda cause: "nan" in cause.lower()),
    Scenario("user_error", "error printed by rank 1 only (its data shard is missing)", "user_error",
             script=SHARDED, shards=(0,), can_finish=False,
             torchrun_right=lambda cause: "FileNotFoundError" in cause),
    # host_oom's numbers on node 1 only: its 2 ranks pass its 2.5 GiB at step 9, its guardrun's
    # 2 GiB at step 7; node 0, the same 2 ranks, has room. The job-wide answer is 1 rank per node.
    Scenario("host_oom_2nodes", "host memory too high on node 1 of 2 (2 ranks each)", "host_oom",
             knobs={"ballast_mb": 1400, "ballast_ramp_steps": 12}, capacity=2560 * MIB, nodes=2,
             node_overrides=("limits.host_memory=2GiB", "limits.hard_memory=off"),
             torchrun_right=lambda cause: "SIGKILL" in cause or "exitcode -9" in cause),
)


@dataclass
class Row:
    scenario: Scenario
    runner: str
    ran: Ran
    finished: bool
    finished_why: str
    attempts: int
    redone: int
    global_batch: int | None
    cause: str
    cause_right: bool
    notes: list[str] = field(default_factory=list)
    past: int = 0                   # steps past target (trainlog.steps_past)


def flags(mapping: dict) -> list[str]:
    out: list[str] = []
    for key, value in mapping.items():
        out += [f"--{key}", str(value)]
    return out


def prepare(scenario: Scenario, work: Path) -> dict:
    """The run's folder: output dir, data shards. Returns the trainer's flags for it."""
    (work / "out").mkdir(parents=True)
    knobs = dict(COMMON, **scenario.knobs)
    if scenario.shards:
        (work / "shards").mkdir()
        for rank in scenario.shards:
            (work / "shards" / f"shard-{rank}.jsonl").write_text('{"text": "a"}\n' * 64)
        knobs["shard_dir"] = str(work / "shards")
    return knobs


def run(argv: list[str], env: dict, scenario: Scenario, timeout: float, notes: list[str]) -> Ran:
    """Run one runner with the scenario's outside forces: the machine's memory, the save killer."""
    cap = memory_cap(scenario, notes)
    stall_kills: list[int] = []

    def on_line(line: str) -> None:
        if scenario.kill_stall and (match := STALL.search(line)):
            pid = int(match.group(1))
            try:
                os.kill(pid, signal.SIGKILL)
                stall_kills.append(pid)
            except ProcessLookupError:
                pass

    try:
        ran = run_tagged(argv, env, timeout, on_line=on_line,
                         on_spawn=(cap.watch if isinstance(cap, OomKiller) else cap.start) if cap else None,
                         preexec_fn=cap.preexec if isinstance(cap, KernelCap) else None)
    finally:
        if cap is not None:
            cap_note(cap, scenario, notes)
    if stall_kills:
        notes.append(f"stalled saves SIGKILLed: {len(stall_kills)}")
    if ran.left:
        notes.append(f"LEFT BEHIND: pids {list(ran.left)}")
    return ran


def memory_cap(scenario: Scenario, notes: list[str]) -> KernelCap | OomKiller | None:
    """The pretend machine: a memory cgroup of its size (the kernel's OOM killer) where
    cgroup v1 memory is writable here, else the stand-in, with a note saying why."""
    if not scenario.capacity:
        return None
    why = kernelcap.why_not()
    if not why:
        try:
            return KernelCap(scenario.capacity)
        except OSError as err:
            why = f"cannot create the memory cgroup: {err.strerror}"
    notes.append(f"no kernel OOM killer here ({why}): the stand-in ran")
    return OomKiller(scenario.capacity)


def cap_note(cap: KernelCap | OomKiller, scenario: Scenario, notes: list[str]) -> None:
    """Stop the cap and say which OOM killer ran and what it did."""
    size = f"{scenario.capacity / MIB:.0f} MiB"
    if isinstance(cap, OomKiller):
        cap.stop()
        notes.append(f"OOM stand-in: {len(cap.kills)} kill(s), peak {cap.peak / MIB:.0f} MiB of {size}")
        return
    left = cap.close()
    notes.append(f"kernel OOM killer in a {size} memory cgroup: {cap.kills} kill(s), "
                 f"peak rss+shmem {cap.peak / MIB:.0f} MiB")
    if left:
        notes.append(f"CGROUP LEFT BEHIND: {'; '.join(left)}")


def keep_output(ran: Ran, work: Path) -> None:
    (work / "runner-output.log").write_text(ran.output)


def run_torchrun(scenario: Scenario, work: Path, timeout: float, unshared: bool = False) -> Row:
    knobs = prepare(scenario, work)
    argv = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(RANKS), "--max-restarts", "3", str(scenario.script), *flags(knobs),
            "--per_device_train_batch_size", str(PER_DEVICE), "--gradient_accumulation_steps", "1",
            "--learning_rate", str(scenario.lr), "--output_dir", str(work / "out"),
            "--resume_from_checkpoint", "last"]
    notes: list[str] = []
    # LOGLEVEL=INFO: the agent prints one "Rendezvous complete" per round, so rounds can be counted
    env = dict(os.environ, LOGLEVEL="INFO")
    if unshared:
        env[UNSHARED] = "1"
    ran = run(argv, env, scenario, timeout, notes)
    return judge_torchrun(scenario, TORCHRUN_UNSHARED if unshared else "torchrun", ran, notes, work)


def judge_torchrun(scenario: Scenario, runner: str, ran: Ran, notes: list[str], work: Path,
                   marks: trainlog.Marks = trainlog.HF_MARKS, max_steps: int = MAX_STEPS) -> Row:
    """A torchrun run judged from the trainer's output (cut into rounds) and its files in work/out."""
    keep_output(ran, work)
    attempts = [trainlog.parse_attempt(text, marks) for text in trainlog.torchrun_rounds(ran.output)]
    finished, why = trainlog.healthy_finish(attempts, ran.code, max_steps)
    cause = trainlog.torchrun_cause(ran.output, ran.code)
    past = trainlog.steps_past(attempts, trainlog.recorded_steps(work / "out"), max_steps)
    return Row(scenario, runner, ran, finished, why, len(attempts), trainlog.steps_redone(attempts),
               trainlog.final_global_batch(attempts), cause, scenario.torchrun_right(cause), notes, past)


def run_nodes(commands: list[tuple[list[str], dict]], scenario: Scenario, timeout: float,
              notes: list[str], work: Path) -> Ran:
    """One command per node, all at once; the last node alone runs under the scenario's
    memory cap. One Ran for the job: node 0's output (global rank 0 prints the trainer's
    lines; the others' are kept beside it), the first non-zero exit, the longest wall time."""
    rans: list[Ran | None] = [None] * len(commands)

    def one(index: int) -> None:
        capped = index == len(commands) - 1
        argv, env = commands[index]
        rans[index] = run(argv, env, scenario if capped else replace(scenario, capacity=None), timeout, notes)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(commands))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, ran in enumerate(rans[1:], start=1):
        (work / f"node{index}-output.log").write_text(ran.output)
    codes = [ran.code for ran in rans]
    code = None if None in codes else next((c for c in codes if c != 0), 0)
    return Ran(code=code, wall=max(ran.wall for ran in rans), output=rans[0].output,
               left=tuple(pid for ran in rans for pid in ran.left))


def run_torchrun_nodes(scenario: Scenario, work: Path, timeout: float) -> Row:
    """torchrun on each node, the static rendezvous on 127.0.0.1, --max-restarts 3."""
    knobs = prepare(scenario, work)
    port = free_port()
    commands = [([PYTHON, "-m", "torch.distributed.run", "--nnodes", str(scenario.nodes), "--node-rank", str(rank),
                  "--master-addr", "127.0.0.1", "--master-port", str(port), "--nproc-per-node", str(RANKS),
                  "--max-restarts", "3", str(scenario.script), *flags(knobs),
                  "--per_device_train_batch_size", str(PER_DEVICE), "--gradient_accumulation_steps", "1",
                  "--learning_rate", str(scenario.lr), "--output_dir", str(work / "out"),
                  "--resume_from_checkpoint", "last"], dict(os.environ, LOGLEVEL="INFO"))
                for rank in range(scenario.nodes)]
    notes: list[str] = []
    ran = run_nodes(commands, scenario, timeout, notes, work)
    return judge_torchrun(scenario, "torchrun", ran, notes, work)


def run_guardrun_nodes(scenario: Scenario, work: Path, timeout: float) -> Row:
    """A guardrun per node, `--node-rank R`, each its own state dir, one shared_dir."""
    knobs = prepare(scenario, work)
    recipe = work / "recipe.yaml"
    recipe.write_text(recipe_text(scenario, knobs) + f"nodes: {{count: {scenario.nodes}, rendezvous: "
                      f"\"127.0.0.1:{free_port()}\", shared_dir: {work / 'shared'}, timeout: 60s}}\n")
    last = scenario.nodes - 1
    commands = [([GUARDRUN, "run", str(recipe), "--node-rank", str(rank),
                  *(scenario.node_overrides if rank == last else ())],
                 dict(os.environ, GUARDRUN_STATE_DIR=str(work / f"state{rank}")))
                for rank in range(scenario.nodes)]
    notes: list[str] = []
    ran = run_nodes(commands, scenario, timeout, notes, work)
    return judge_guardrun(scenario, ran, notes, work, work / "state0" / scenario.name, ended_as="node.settled")


def recipe_text(scenario: Scenario, knobs: dict) -> str:
    args = ", ".join(f"{key}: {json.dumps(value)}" for key, value in knobs.items())
    limits = f"limits: {scenario.limits}\n" if scenario.limits else ""
    return textwrap.dedent(f"""\
        name: {scenario.name}
        launcher: torchrun
        script: {scenario.script}
        args: {{{args}, output_dir: ./out}}
        gpus: {RANKS}
        batch: {{per_device: {PER_DEVICE}, grad_accum: 1}}
        lr: {{value: {scenario.lr}}}
        checkpoints: {{dir: ./out, resume_arg: --resume_from_checkpoint}}
        monitor: {{interval: 0.25}}
        stop_grace: 10s
        restarts: {{max: 3, backoff: [1s, 10s]}}
        success: {{regex: 'finished at step'}}
        """) + limits


def run_guardrun(scenario: Scenario, work: Path, timeout: float) -> Row:
    knobs = prepare(scenario, work)
    recipe = work / "recipe.yaml"
    recipe.write_text(recipe_text(scenario, knobs))
    state = work / "state"
    notes: list[str] = []
    ran = run([GUARDRUN, "run", str(recipe)], dict(os.environ, GUARDRUN_STATE_DIR=str(state)),
              scenario, timeout, notes)
    return judge_guardrun(scenario, ran, notes, work, state / scenario.name)


def judge_guardrun(scenario: Scenario, ran: Ran, notes: list[str], work: Path, job: Path,
                   marks: trainlog.Marks = trainlog.HF_MARKS, max_steps: int = MAX_STEPS,
                   ended_as: str = "attempt.ended") -> Row:
    """A guardrun run judged from each attempt's output, the trainer's files and the journal
    (`ended_as`: the event that says how an attempt ended; a multi-node job's is node.settled,
    the kind merged from every node's word, not this node's echo of it)."""
    keep_output(ran, work)
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()] \
        if (job / "events.jsonl").is_file() else []
    started = [e for e in events if e["event"] == "guardrun.attempt.started"]
    ended = [e for e in events if e["event"] == f"guardrun.{ended_as}"]
    attempts = [trainlog.parse_attempt(_read(job / "attempts" / str(e["attempt"]) / "output.log"), marks)
                for e in started]
    finished, why = trainlog.healthy_finish(attempts, ran.code, max_steps)
    cause, right = guardrun_cause(ended, scenario.expect)
    for event, log in zip(ended, attempts):
        if log.finished_at is not None and event.get("kind") != "success":
            reason = (event.get("root_cause") or {}).get("message", "")[:100]
            notes.append(f"attempt {event['attempt']} ended {event.get('kind')} after the trainer said "
                         f"it finished at step {log.finished_at} ({reason})")
    printed = trainlog.final_global_batch(attempts)
    if started and printed is not None and started[-1].get("global_batch") != printed:
        notes.append(f"journal says global batch {started[-1].get('global_batch')}")
    past = trainlog.steps_past(attempts, trainlog.recorded_steps(work / "out"), max_steps)
    return Row(scenario, "guardrun", ran, finished, why, len(started), trainlog.steps_redone(attempts),
               trainlog.final_global_batch(attempts), cause, right, notes, past)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def guardrun_cause(ended: list[dict], expect: str) -> tuple[str, bool]:
    """The kinds guardrun gave its attempts, and the root cause of a run it gave up on."""
    kinds = [e.get("kind", "?") for e in ended]
    text = " → ".join(kinds) or "no attempt ended"
    failures = [e for e in ended if e.get("kind") != "success"]
    cause = (failures[-1].get("root_cause") or {}) if failures else {}
    if kinds and kinds[-1] != "success" and cause:
        where = f" on rank {cause['rank']}" if cause.get("rank") is not None else ""
        message = re.sub(r"'/[^']*/([^'/]+)'", r"'…/\1'", cause.get("message", ""))  # temp paths: names only
        text += f" ({cause.get('kind')}{where}: {message[:100]})"
    if expect == "success":
        return text, kinds == ["success"]
    right = bool(failures) and failures[0].get("kind") == expect
    if expect == "user_error":
        right = right and cause.get("rank") == 1 and "FileNotFoundError" in cause.get("message", "")
    return text, right


def table(rows: list[Row]) -> str:
    head = ("| scenario | runner | finished | exit | wall s | attempts | steps redone | final global batch "
            "| reported cause | cause right | steps past target |")
    out = [head, "|---|---|---|---|---:|---:|---:|---:|---|---|---:|"]
    for row in rows:
        finished = "yes" if row.finished else f"no: {row.finished_why}"
        code = "timeout" if row.ran.code is None else str(row.ran.code)
        out.append(f"| {row.scenario.title} | {row.runner} | {finished} | {code} | {row.ran.wall:.1f} "
                   f"| {row.attempts} | {row.redone} | {row.global_batch or '-'} | {_cell(row.cause)} "
                   f"| {'yes' if row.cause_right else 'no'} | {row.past} |")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary(rows: list[Row]) -> list[str]:
    lines = []
    for runner in ("torchrun", TORCHRUN_UNSHARED, "guardrun"):
        mine = [r for r in rows if r.runner == runner and r.scenario.name != "reference"]
        if not mine:
            continue
        finishable = [r for r in mine if r.scenario.can_finish]
        hung = [r.scenario.name for r in mine if r.ran.code is None]
        lines.append(f"- {runner}: finished {sum(r.finished for r in finishable)}/{len(finishable)} "
                     f"(of the faulty scenarios that can finish), cause right {sum(r.cause_right for r in mine)}"
                     f"/{len(mine)}, {sum(r.attempts for r in mine)} attempts, "
                     f"{sum(r.redone for r in mine)} steps redone, {sum(r.past for r in mine)} steps past target, "
                     f"{sum(r.ran.wall for r in mine):.0f} s in all"
                     + (f"; hung (stopped by the bench after the timeout): {', '.join(hung)}" if hung else ""))
    pairs = {(r.scenario.name, r.runner): r for r in rows}
    ref_t, ref_g = pairs.get(("reference", "torchrun")), pairs.get(("reference", "guardrun"))
    if ref_t and ref_g and ref_t.ran.wall > 0:
        lines.append(f"- no fault: guardrun / torchrun wall time = {ref_g.ran.wall / ref_t.ran.wall:.2f} "
                     f"({ref_g.ran.wall:.1f} s / {ref_t.ran.wall:.1f} s)")
    for row in rows:
        for note in row.notes:
            lines.append(f"- {row.scenario.name}, {row.runner}: {note}")
    return lines


def runners_for(scenario: Scenario, lf_scenarios) -> list[tuple[str, Callable]]:
    if scenario in lf_scenarios.SCENARIOS:
        return list(lf_scenarios.RUNNERS)
    if scenario.nodes > 1:
        return [("torchrun", run_torchrun_nodes), ("guardrun", run_guardrun_nodes)]
    runners = [("torchrun", run_torchrun)]
    if scenario.restarts:
        runners.append(("torchrun-unshared", lambda *a: run_torchrun(*a, unshared=True)))
    return runners + [("guardrun", run_guardrun)]


def preamble(timeout: float, lf_skipped: str | None) -> None:
    """What the table's runners, rows and columns are (printed above it)."""
    print("### Field situations: torchrun --max-restarts 3 against guardrun (HF Trainer, LLaMA-Factory)\n")
    print(f"Runners: `torchrun` as shipped; `{TORCHRUN_UNSHARED}` (torch's opt-out of the rendezvous "
          "store that torchrun shares with its workers, whose stale keys break its restarts here; only where "
          "it restarts); `guardrun` with the default ladder and `success: {regex: 'finished at step'}`. All three "
          f"have 3 restarts. A run still going after {timeout:g} s is stopped by the bench (exit `timeout`).\n")
    print(f"The HF Trainer test script, 2 CPU ranks, {MAX_STEPS} steps, a checkpoint every "
          f"{COMMON['save_steps']}, global batch {PER_DEVICE * RANKS}. `finished`: exit 0, the trainer says "
          f"it finished at step {MAX_STEPS}, and its last loss is finite. `steps redone`: steps trained "
          "more than once. `reported cause`: torchrun's final ChildFailedError block (root cause); "
          "guardrun's attempt kinds in order (and its root cause when it gave up). `steps past target`: "
          "the highest global step the trainer's bar showed or its files recorded (checkpoints' "
          "trainer_state.json, trainer_log.jsonl), less max_steps, floored at 0.\n")
    print("`host memory too high on node 1 of 2`: the same script as one job on two \"nodes\" of this machine, "
          f"{RANKS} ranks each (global batch {PER_DEVICE * RANKS * 2}), one runner process per node: "
          "`torchrun --nnodes 2 --node-rank R --master-addr 127.0.0.1 --master-port P --max-restarts 3` "
          "against `guardrun run recipe.yaml --node-rank R` (`nodes:` count 2, one shared_dir); node 1 alone "
          "runs in the pretend machine's memory cgroup (and its guardrun alone has `limits.host_memory`, given on "
          "its command line); judged from node 0's output, where global rank 0 prints.\n")
    print("LLaMA-Factory rows (bench/lf_scenarios.py): LLaMA-Factory 0.9.5, LoRA SFT of a tiny offline Llama, "
          "2 CPU ranks through its own torchrun launch, 12 steps, global batch 4 (2 x 2 ranks), "
          "judged from its own record (its log lines, trainer_state.json, trainer_log.jsonl). torchrun: "
          f"`FORCE_TORCHRUN=1 NPROC_PER_NODE=2 MAX_RESTARTS=3 RDZV_ID=bench {UNSHARED}=1 llamafactory-cli "
          "train cfg.yaml` (its launcher passes --max-restarts only with RDZV_ID; it resumes by itself from "
          "the newest checkpoint-N; only with torch's opt-out: as shipped its restarts fail here as the HF rows "
          "show, round 2 in gloo's connectFullMesh, round 3 hung); guardrun: a `launcher: command` recipe, the default ladder, no `success:`. "
          "Both with a shim that works around transformers 5.6's CPU-only 2-rank resume bug "
          "(bench/lf_shim).\n" + (f"\nLLaMA-Factory rows skipped: {lf_skipped}.\n" if lf_skipped else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per run before the bench stops it")
    parser.add_argument("--keep", help="keep each run's folder (journal, output) under this directory")
    args = parser.parse_args()
    sys.modules.setdefault("scenarios", sys.modules[__name__])  # run as a script: one copy for lf_scenarios
    import lf_scenarios

    wanted = args.only.split(",") if args.only else None
    chosen = [s for s in SCENARIOS + lf_scenarios.SCENARIOS if wanted is None or s.name in wanted]
    skipped = lf_scenarios.missing() if any(s in lf_scenarios.SCENARIOS for s in chosen) else None
    if skipped:
        print(f"scenarios: LLaMA-Factory scenarios skipped: {skipped}", file=sys.stderr, flush=True)
        chosen = [s for s in chosen if s not in lf_scenarios.SCENARIOS]
    rows: list[Row] = []
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="guardrun-scenarios-"))
    for scenario in chosen:
        for runner, call in runners_for(scenario, lf_scenarios):
            print(f"scenarios: {scenario.name} under {runner} ...", file=sys.stderr, flush=True)
            row = call(scenario, base / scenario.name / runner, args.timeout)
            print(f"scenarios:   {'finished' if row.finished else 'not finished'} in {row.ran.wall:.1f} s, "
                  f"{row.attempts} attempt(s), cause {row.cause}", file=sys.stderr, flush=True)
            rows.append(row)
    preamble(args.timeout, skipped)
    print(table(rows))
    print()
    print("\n".join(summary(rows)))
    left = [r for r in rows if r.ran.left or any(n.startswith("CGROUP LEFT") for n in r.notes)]
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
