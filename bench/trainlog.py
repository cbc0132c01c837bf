"""What the test trainer's own output says about a run: pure functions over text.

The scenarios judge torchrun and guardrun by the same evidence, the trainer's lines
(tests/trainers/hf_lora_train.py with `--logging_steps 1`):

    [hf_lora_train] world_size=2 per_device=4 grad_accum=1 global_batch=8 lr=... resume_from=... attempt=1
     58%|#####8    | 7/12 [00:01<00:01,  4.00it/s]          (the Trainer's progress bar)
    {'loss': '4.86', 'grad_norm': '0.109', ...}              (one per optimizer step)
    [hf_lora_train] finished at step 12

LLaMA-Factory's lines are the same Trainer's, with its own start and end (LF_MARKS):
`Total train batch size (w. parallel, distributed & accumulation) = 4` and `Training completed.`

A torchrun run is cut into attempts at its agent's "Rendezvous complete for workers" line
(printed with LOGLEVEL=INFO once per round, restarts included), because a restarted round
may die before rank 0 prints anything.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

START = re.compile(r"\[hf_lora_train\] world_size=(\d+) per_device=(\d+) grad_accum=(\d+) "
                   r"global_batch=(?P<batch>\d+) lr=(\S+)")
LOSS = re.compile(r"\{'loss': '?([^,']+)'?,")  # anywhere: torchrun --tee glues it to the bar
BAR = re.compile(r"\|\s*(\d+)/(\d+) \[")
FINISHED = re.compile(r"\[hf_lora_train\] finished at step (\d+)")
ROUND = "Rendezvous complete for workers"


@dataclass(frozen=True)
class Marks:
    """Where a trainer says its global batch (group `batch` of `start`) and that it finished
    (group 1 of `finished` is the step; without a group, the step its bar had reached), and
    which tqdm bar is the Trainer's."""
    start: re.Pattern
    finished: re.Pattern
    bar: re.Pattern = BAR


HF_MARKS = Marks(START, FINISHED)
# LLaMA-Factory also prints the datasets library's bars ("Running tokenizer on dataset: 100%|...|
# 200/200 ["): the Trainer's is the one with no description before its percentage
LF_MARKS = Marks(re.compile(r"Total train batch size \(w\. parallel, distributed & accumulation\) = (?P<batch>\d+)"),
                 re.compile(r"Training completed\."), re.compile(r"^\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \["))


@dataclass(frozen=True)
class AttemptLog:
    trained: int                 # optimizer steps run in this attempt (loss lines)
    reached: int                 # the highest step its progress bar showed
    global_batch: int | None     # from the start line, when rank 0 got that far
    last_loss: float | None
    finished_at: int | None      # "finished at step N"


def lines(text: str) -> list[str]:
    """Lines split at '\\n' and '\\r' (tqdm redraws its bar after a bare '\\r')."""
    return [line for line in re.split(r"[\r\n]+", text) if line]


def parse_attempt(text: str, marks: Marks = HF_MARKS) -> AttemptLog:
    trained, reached, batch, loss, finished = 0, 0, None, None, None
    for line in lines(text):
        if match := marks.start.search(line):
            batch = int(match.group("batch"))
        for bar in marks.bar.finditer(line):
            reached = max(reached, int(bar.group(1)))
        for match in LOSS.finditer(line):
            trained += 1
            loss = _number(match.group(1))
        if match := marks.finished.search(line):
            finished = int(match.group(1)) if match.groups() else reached
    return AttemptLog(trained, reached, batch, loss, finished)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def torchrun_rounds(output: str) -> list[str]:
    """torchrun's output cut into its rounds (attempt 1, then each restart)."""
    parts = output.split(ROUND)
    if len(parts) == 1:
        return [output]
    # what came before the first round (the agent's own start-up) belongs to round 1
    return [parts[0] + parts[1], *parts[2:]]


def steps_redone(attempts: list[AttemptLog]) -> int:
    """Steps trained more than once: every step trained, less the furthest step reached."""
    return sum(a.trained for a in attempts) - max((a.reached for a in attempts), default=0)


def healthy_finish(attempts: list[AttemptLog], code: int | None, max_steps: int) -> tuple[bool, str]:
    """Finished = exit 0, the trainer said it finished at max_steps, and its last loss is finite."""
    if not attempts:
        return False, "no output"
    last = attempts[-1]
    if code is None:
        return False, "hung: stopped by the bench"
    if code != 0:
        return False, f"exit {code}"
    if last.finished_at != max_steps:
        return False, f"exit 0 but finished at {last.finished_at}"
    if last.last_loss is None or not math.isfinite(last.last_loss):
        return False, f"exit 0 with loss {last.last_loss} (NaN weights)"
    return True, "yes"


def recorded_steps(out: Path) -> list[int]:
    """The global steps the trainer itself recorded under its output dir: `global_step` of each
    checkpoint's trainer_state.json, and `current_steps` of trainer_log.jsonl (LLaMA-Factory's)."""
    steps = []
    for state in out.glob("checkpoint-*/trainer_state.json"):
        try:
            steps.append(int(json.loads(state.read_text())["global_step"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a save cut short: no step on record
    try:
        log = (out / "trainer_log.jsonl").read_text(errors="replace")
    except OSError:
        log = ""
    for line in log.splitlines():
        try:
            steps.append(int(json.loads(line)["current_steps"]))
        except (ValueError, KeyError, TypeError):
            continue
    return steps


def steps_past(attempts: list[AttemptLog], recorded: list[int], max_steps: int) -> int:
    """How far the trainer went beyond its target: the highest step its bar showed or its
    files recorded, less max_steps, floored at 0 (a relaunch from the last checkpoint of a
    finished run trains step max_steps + 1: defect 1 of issue 13)."""
    highest = max([a.reached for a in attempts] + recorded, default=0)
    return max(0, highest - max_steps)


def final_global_batch(attempts: list[AttemptLog]) -> int | None:
    for attempt in reversed(attempts):
        if attempt.global_batch is not None:
            return attempt.global_batch
    return None


_BLOCK = re.compile(r"Root Cause \(first observed failure\):\n(.*?)\n={10,}", re.S)
_FIELD = re.compile(r"^\s+(rank|exitcode|error_file|traceback)\s*:\s*(.*?)\s*$", re.M)


def torchrun_cause(output: str, code: int | None) -> str:
    """What torchrun's own final report names as the root cause (its ChildFailedError block)."""
    if code == 0:
        return "none (exit 0)"
    blocks = _BLOCK.findall(output.replace("\r", ""))
    if not blocks:
        return "no report" if code is not None else "no report (hung)"
    fields = dict(_FIELD.findall(blocks[-1]))
    rank = fields.get("rank", "?").split(" ")[0]
    exitcode = " ".join(re.sub(r"\(pid: \d+\)", "", fields.get("exitcode", "?")).split())
    text = f"rank {rank}, exitcode {exitcode}"
    traceback = fields.get("traceback", "")
    if traceback and not traceback.startswith("To enable traceback"):
        text += ": " + re.sub(r"PID \d+", "PID N", traceback)
    elif fields.get("error_file", "<N/A>") == "<N/A>":
        text += ", error_file <N/A>"
    return text
