"""One line of the job's output -> the events in it (progress, loss, nan, OOM, errors, saves).

Pure: `parse_line` sees one line and nothing else, so every pattern is tested with plain
strings (tests/unit/test_logs.py) and with outputs captured from real runs
(tests/data/outputs/). The patterns follow what the tools really print; FIELD_NOTES.md
("torchrun", "Hugging Face Trainer") has the background.

Most lines carry nothing: one combined precheck (substring tests over `_KEYS`, the union
of every rule's keys) rejects them before any pattern runs. A single regex alternation of
the same literals was slower here (2.2-4.1 µs a line against 1.0-1.9 µs: sre tries every
branch at every position). Measured with timeit, CPython 3.11, one core of this (slow)
machine, 200k calls each: an ordinary 95-char line that matches nothing 1.4 µs, a 150-char
warning line 2.3 µs; a tqdm bar 7 µs, an HF loss dict 10 µs, an OOM exception line 7 µs
(those are a few lines a second). With iter_lines and strip_ansi: ~300k lines/s.
A plain script's `step 12 loss 0.53` is read by splitting the line's head into words
(plainprogress.py, issue 13): ~9 µs for such a line, ~6 µs for prose naming an epoch or an
iteration, unchanged for the rest (same timeit, 20k calls, 2026-12-01, a busy machine).

Nothing from the job is ever evaluated: HF's dict lines are read with a regex over a
bounded substring, and values go through `float()` only.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from .lines import strip_ansi
from .plainprogress import plain_progress

#: Evidence text is capped so a flood of long lines cannot grow the evidence kept.
TEXT_CAP = 300
#: Only a line's head is read: every message we look for sits in the first few hundred
#: characters, and a bound keeps the windowed patterns ('NCCL.{0,300}timeout') cheap on a
#: hostile 64 KiB line ('NCCL ' * 12000 took 25 ms unbounded, 2 ms with this cap).
SCAN_CAP = 4096


@dataclass(frozen=True)
class Event:
    """One fact read from the job's output.

    kind: progress | loss | nan | cuda_oom | host_oom | user_error | transient | traceback |
    error | save. `first_failure` ranks the failure kinds.
    """

    kind: str
    text: str   # the line (ANSI-stripped, at most TEXT_CAP chars): evidence to show the user
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    rank: int | None = None   # from a '[rank3]:' / '[default3]:' / '3: ' prefix, or torchrun's local_rank
    detail: str = ''          # the exception name ('ModuleNotFoundError'), a tqdm desc, a checkpoint path


# '[rank3]: ' (torch >= 2.2 c10d adds the space), '[default3]:' (torchrun --tee, no space),
# anywhere: tqdm leaves no newline, so a rank's traceback often starts mid-line after a bar.
# '3: ' only at the start.
_RANK_TAG = re.compile(r"\[rank(\d{1,5})\]: ?|\[default(\d{1,5})\]:|^(\d{1,5}): ")
_LEADING_TAG = re.compile(r"\[(?:rank|default)\d{1,5}\]: ?")
_LOCAL_RANK = re.compile(r"local_rank[:=]\s*(\d{1,5})")

# A Python exception line: 'torch.OutOfMemoryError: ...', 'KeyboardInterrupt', 'AssertionError'.
_EXCEPTION = re.compile(r"([A-Za-z_][\w.]{0,200}(?:Error|Exception|Interrupt|Exit|Failure))(?::\s|:?$)")


@dataclass(frozen=True)
class _Rule:
    kind: str
    keys: tuple[str, ...]   # substrings one of which every match contains: a cheap gate
    pattern: re.Pattern
    label: str = ''         # detail when the line is not an exception line


def _rule(kind: str, keys: str, pattern: str, label: str = '') -> _Rule:
    return _Rule(kind, tuple(keys.split("|")), re.compile(pattern), label)


# Checked in order; the first that matches is the line's failure event. OOM first: an OOM
# line is also an exception line, and a CUDA OOM line also contains 'MemoryError'.
_FAILURE_RULES = (
    _rule("cuda_oom", "emory|ALLOC_FAILED|calloc",
          r"CUDA out of memory|HIP out of memory|OutOfMemoryError|CUDA error: out of memory"
          r"|CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation|Failed to CUDA calloc"
          r"|NCCL.{0,200}out of memory|Cuda failure[^']{0,20}'out of memory'"),
    _rule("host_oom", "illed", r"^Killed\s*$|^\S+: line \d+:\s+\d+ Killed\b", "Killed"),
    # accelerate launch with one process (its simple_launcher): "CalledProcessError: Command
    # '[...]' died with <Signals.SIGKILL: 9>." (accelerate 1.15, measured).
    _rule("host_oom", "-9|SIGKILL", r"exitcode\s*:\s*-9\b|Signal 9 \(SIGKILL\) received|return code = -9\b"
          r"|died with <Signals\.SIGKILL: 9>", "SIGKILL"),
    _rule("host_oom", "emory|bad_alloc|illed",
          r"Out of memory: Kill|std::bad_alloc|DefaultCPUAllocator: can't allocate memory"
          r"|Cannot allocate memory|MemoryError\b|is killed by signal: Killed", "host memory"),
    _rule("user_error", "Error",
          r"^(?:[\w.]+\.)?(?:ModuleNotFoundError|ImportError|SyntaxError|IndentationError|TabError"
          r"|FileNotFoundError):"),
    _rule("user_error", "error:",
          r"^\S+: error: (?:unrecognized arguments|the following arguments are required|argument "
          r"|invalid choice)", "argparse"),
    _rule("user_error", "can't open", r"can't open file '.{0,500}': \[Errno 2\]", "missing script"),
    _rule("user_error", "kernel image", r"no kernel image is available", "no kernel image"),
    # NCCL refusing the setup (two ranks on one GPU, a bad CUDA_VISIBLE_DEVICES): a retry
    # fails the same way (real_gpu_nccl_duplicate_gpu.txt, NCCL 2.28).
    _rule("user_error", "ncclInvalidUsage|Duplicate GPU", r"ncclInvalidUsage|Duplicate GPU detected",
          "nccl invalid usage"),
    _rule("user_error", "HfArgumentParser|valid checkpoint",
          r"not used by the HfArgumentParser|Can't find a valid checkpoint at"),
    # LLaMA-Factory 0.9.5's data errors are plain ValueErrors about the user's own files
    # (real_llamafactory_undefined_dataset.txt, real_llamafactory_file_not_found.txt).
    _rule("user_error", "dataset_info|not found.",
          r"^(?:[\w.]+\.)?ValueError: (?:Undefined dataset .{1,500} in .{0,500}dataset_info\.json"
          r"|Dataset .{1,500} not found in .{0,500}dataset_info\.json|File .{1,1000} not found\.$)",
          "data"),
    _rule("transient", "NCCL|peer|ECC|Xid",
          r"Watchdog caught collective operation timeout|NCCL.{0,300}(?i:time(?:d )?out)"
          r"|Connection (?:reset|closed) by peer|ECC error|\bXid\b", "transient"),
)

#: Substrings of an exception line or a traceback's first line.
_ERROR_KEYS = ("Error", "Exception", "Interrupt", "Exit", "Failure", "Traceback")
#: The union of every detector's keys: a line with none of them gives () at once.
_KEYS = tuple(dict.fromkeys(
    ("loss", "%|", "tep", "Iter(", "iter", "poch", "Saving model checkpoint", *_ERROR_KEYS,
     *(key for rule in _FAILURE_RULES for key in rule.keys))))


# HF Trainer's log dict, either form: {'loss': 5.554, ...} or {'loss': '5.554', ...}.
_DICT = re.compile(r"\{[^{}]{0,4000}\}")
_DICT_VALUE = re.compile(
    r"""['"](loss|grad_norm|step|train_runtime)['"]\s*:\s*(?:np\.float\d+\()?['"]?([-+\w.]{1,40})""")
# mmengine (XTuner): 'Iter(train) [  10/1000]  lr: 2e-04 ... loss: 1.2345'.
_MMENGINE = re.compile(r"Iter\(train\)\s*\[\s*(\d+)/(\d+)\]")
_MMENGINE_VALUE = re.compile(r"\b(loss|grad_norm): ([-+\w.]{1,40})")

# tqdm: '{desc}: 45%|████▌     | 9/20 [00:04<00:05, 2.1it/s, loss=0.53]'.
_TQDM = re.compile(r"(?<![\d.])(\d{1,3})%\|[^|]{0,400}\|\s*(\d+)/(\d+)\s*\[([^\]]{0,200})")
# Lightning's bar shows what `self.log(..., prog_bar=True)` logged: 'train_loss=0.874'.
_TQDM_LOSS = re.compile(r"\b(?:train_)?loss=([-+\w.]{1,40})")
# Bars that are not the training loop: dataset preparation, loading, evaluation.
_NOT_TRAINING = re.compile(r"Map|Filter|Load|Generat|Download|Fetch|Tokeniz|tokenizer|Convert|Sav"
                           r"|Resolv|Extract|Evaluat|Predict|shards", re.IGNORECASE)
_STEP = re.compile(r"\bglobal_step\s*[=:]\s*(\d+)(?:\s*/\s*(\d+))?"
                   r"|\b[Ss]tep[\s=:]\s*(\d+)\s*/\s*(\d+)"
                   r"|\bstep=(\d+), skipped=")

_SAVE = re.compile(r"Saving model checkpoint(?: to|:) (\S{1,1000})")
_SAVE_STEP = re.compile(r"(?:checkpoint-|global_step)(\d+)")

_TRACEBACK = "Traceback (most recent call last):"


def parse_line(line: str) -> tuple[Event, ...]:
    """The events in one line of job output; () for nearly every line."""
    line = line[:SCAN_CAP]
    if "\x1b" in line:
        line = strip_ansi(line)
    if not _has_any(line, _KEYS):
        return ()
    rank, body = split_rank(line)
    events = [*_progress(body, rank), *_metrics(line, rank), *_saves(line, rank)]
    failure = _failure(line, body, rank)
    if failure is not None:
        events.append(failure)
    return tuple(events)


def first_failure(events: Iterable[Event]) -> Event | None:
    """The most specific failure evidence among an attempt's events; the earliest of equals.

    An OOM or a user error names the cause; a nan loss comes next; a transient error is
    often only the echo of another rank's death (an NCCL timeout after a rank OOMed), so it
    ranks below them; a bare exception or traceback is the last resort.

    A transient error after an exception that ended a traceback is that death's echo, never
    the cause: rank 0 raised in torch.save and rank 1's gloo then said "Connection closed by
    peer ... typically caused by a remote worker crashing" (real_torchrun_save_error_gloo_echo.txt);
    the first traceback in the output is the cause. gloo's line says it is an echo, so it is
    one whenever another exception is there, even printed first.
    """
    events = list(events)
    best, best_rank = None, len(SPECIFICITY)
    traced: set[int | None] = set()   # ranks that printed a traceback header
    died = False                      # an exception has ended a traceback before this event
    # gloo names its own echo; ranks' streams are buffered apart, so it may come first
    other_death = any(e.kind in _ENDS_TRACEBACK and e.kind != "transient" for e in events)
    for event in events:
        kind = event.kind
        if kind == "traceback":
            traced.add(event.rank)
        elif kind == "transient" and (died or (other_death and _ECHO in event.text)):
            continue  # the echo of another death
        elif kind in _ENDS_TRACEBACK and event.rank in traced:
            died = True
        rank = SPECIFICITY.get(kind)
        if rank is not None and rank < best_rank:
            best, best_rank = event, rank
    return best


#: gloo's own words for a peer's death (pair.cc, torch 2.13: "Connection closed by peer
#: [127.0.0.1]:PORT. This is typically caused by a remote worker crashing.").
_ECHO = "caused by a remote worker crashing"
#: Failure kinds an exception line that ends a traceback can have.
_ENDS_TRACEBACK = frozenset({"cuda_oom", "host_oom", "user_error", "transient", "error"})


SPECIFICITY = {"cuda_oom": 0, "host_oom": 0, "user_error": 0, "nan": 1, "transient": 2,
                "error": 3, "traceback": 4}


def _has_any(line: str, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if key in line:
            return True
    return False


def split_rank(line: str) -> tuple[int | None, str]:
    """The rank tag's number and the text after it (the whole line when untagged)."""
    found = _RANK_TAG.search(line)
    if found is None:
        return None, line
    body = line[found.end():]
    # torchrun --tee over torch's own tag: '[default1]:[rank1]:   File ...' (torch 2.11, GPU)
    while (more := _LEADING_TAG.match(body)) is not None:
        body = body[more.end():]
    return int(found.group(1) or found.group(2) or found.group(3)), body


def _event(kind: str, line: str, start: int = 0, rank: int | None = None, **fields) -> Event:
    # torchrun's "failed (exitcode: -9) local_rank: 1" and DeepSpeed's "'--local_rank=1'] exits
    # with return code = -9" name the killed rank in the line itself.
    if rank is None and kind == "host_oom":
        local = _LOCAL_RANK.search(line)
        rank = int(local.group(1)) if local else None
    return Event(kind, _evidence(line, start), rank=rank, **fields)


def _evidence(line: str, start: int) -> str:
    """The line, stripped and capped at TEXT_CAP; when the match lies far in, text around it."""
    text = line.strip()
    if len(text) <= TEXT_CAP:
        return strip_ansi(text)
    offset = max(0, start - (len(line) - len(line.lstrip())))
    if offset < TEXT_CAP // 2:
        return strip_ansi(text[:TEXT_CAP - 1]) + "…"
    return "…" + strip_ansi(text[offset - 40:offset + TEXT_CAP - 42]) + "…"


def _progress(line: str, rank: int | None) -> Iterator[Event]:
    """A tqdm bar of the training loop (not dataset or loading bars), a plain script's
    'step 12 loss 0.53' line, or a 'global_step 7/30' anywhere in a line."""
    if "%|" in line:
        bar = _TQDM.search(line)
        if bar is not None and not _NOT_TRAINING.search(line, 0, bar.start()):
            yield from _bar(line, rank, bar)
            return
    plain = plain_progress(line)
    if plain is not None:
        step, total, epoch, loss = plain
        if step is not None:
            yield _event("progress", line, 0, rank, step=step, total=total,
                         detail=f"epoch {epoch}" if epoch is not None else "")
        if loss is not None:
            yield from _loss_event(line, rank, {"loss": loss}, step)
        return
    if "tep" in line:
        found = _STEP.search(line)
        if found is not None:
            step = found.group(1) or found.group(3) or found.group(5)
            total = found.group(2) or found.group(4)
            yield _event("progress", line, found.start(), rank, step=int(step),
                         total=int(total) if total else None)


def _bar(line: str, rank: int | None, bar: re.Match) -> Iterator[Event]:
    """A training bar: its n/total, its description as the detail, and a `loss=` (or
    Lightning's `train_loss=`) in its postfix. A bar named after an epoch (`Epoch 1: 50%| 1/2`,
    Lightning's TQDMProgressBar) counts that epoch's batches, not the run's steps: the reader
    marks its total as one epoch's (output.Progress.per_epoch), so it is never the target."""
    desc = line[:bar.start()].strip().rstrip(":")
    step = int(bar.group(2))
    yield _event("progress", line, bar.start(), rank, step=step, total=int(bar.group(3)), detail=desc[-80:])
    loss = _TQDM_LOSS.search(bar.group(4))
    if loss is not None:
        yield from _loss_event(line, rank, {"loss": loss.group(1)}, step)


def _metrics(line: str, rank: int | None) -> Iterator[Event]:
    """Loss / nan events from an HF Trainer dict line or an mmengine (XTuner) line."""
    if "Iter(train)" in line:
        found = _MMENGINE.search(line)
        if found is not None:
            values = dict(_MMENGINE_VALUE.findall(line, found.end(), found.end() + 2000))
            yield _event("progress", line, found.start(), rank, step=int(found.group(1)),
                         total=int(found.group(2)))
            yield from _loss_event(line, rank, values, int(found.group(1)))
        return
    if "loss" not in line and "grad_norm" not in line:
        return
    for found in _DICT.finditer(line):
        values = dict(_DICT_VALUE.findall(found.group()))
        if "train_runtime" in values:   # the end-of-training summary, not a step's loss
            continue
        step = _as_float(values.get("step"))
        step = int(step) if step is not None and math.isfinite(step) else None
        yield from _loss_event(line, rank, values, step)


def _loss_event(line: str, rank: int | None, values: dict, step: int | None) -> Iterator[Event]:
    loss, grad_norm = _as_float(values.get("loss")), _as_float(values.get("grad_norm"))
    loss_bad = loss is not None and not math.isfinite(loss)
    if loss_bad or (grad_norm is not None and not math.isfinite(grad_norm)):
        yield _event("nan", line, 0, rank, step=step, loss=loss, detail="loss" if loss_bad else "grad_norm")
    elif loss is not None:
        yield _event("loss", line, 0, rank, step=step, loss=loss)


def _as_float(text: str | None) -> float | None:
    """A logged number ('5.554', 'nan', '-inf', 'NaN'), or None for anything else."""
    if text is None or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _saves(line: str, rank: int | None) -> Iterator[Event]:
    if "Saving model checkpoint" not in line:
        return
    found = _SAVE.search(line)
    if found is not None:
        path = found.group(1)
        steps = _SAVE_STEP.findall(path)
        yield _event("save", line, found.start(), rank, step=int(steps[-1]) if steps else None,
                     detail=path[-200:])


def _failure(line: str, body: str, rank: int | None) -> Event | None:
    """The line's failure event: an OOM, user error or transient error, else an exception line.

    A traceback's source lines (indented 4 spaces: `    raise torch.OutOfMemoryError(msg)`)
    are skipped: the exception line that follows says the same with the message.
    """
    if body.startswith("    "):
        return None
    exception = _EXCEPTION.match(body.lstrip())
    name = exception.group(1) if exception else ''
    for rule in _FAILURE_RULES:
        found = rule.pattern.search(body) if _has_any(body, rule.keys) else None
        if found is not None:
            return _event(rule.kind, line, found.start() + len(line) - len(body), rank,
                          detail=name or rule.label)
    position = line.find(_TRACEBACK)
    if position >= 0:
        return _event("traceback", line, position, rank)
    if exception is not None:
        return _event("error", line, len(line) - len(body), rank, detail=name)
    return None
