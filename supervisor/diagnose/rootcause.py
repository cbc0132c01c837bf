"""Why an attempt died, on one screen: the first failing rank, its exception and last frames.

Eight ranks print eight tracebacks, interleaved, and torchrun adds a ChildFailedError
block whose `error_file` is usually `<N/A>` (FIELD_NOTES, situation 5). Two sources say
which failure came first:

- torchelastic error files: a rank whose entry point is wrapped in `@record` writes
  `{"message": {"message": "T: msg", "extraInfo": {"py_callstack": ..., "timestamp": ...}}}`
  to `$TORCHELASTIC_ERROR_FILE` (torch/distributed/elastic/multiprocessing/errors/
  error_handler.py, record_exception). torchrun gives every worker its own under
  `--log-dir` (`<dir>/<run id>/attempt_0/<local rank>/error.json`). Their timestamps are
  the only cross-rank clock there is; the smallest wins, as in torchrun's own
  "Root Cause (first observed failure)".
- the output: every traceback is followed per rank (`[rank3]:` / `[default3]:` tags),
  and the failure line that ends it keeps its last frames. Pipe order across ranks is
  not a clock (each rank's stream is buffered on its own), so among tracebacks the one
  whose line says the most is chosen (`logs.first_failure`: an OOM before the NCCL
  timeout it caused on the other ranks), the earliest of equals.

Everything kept is bounded: MAX_FRAMES frames per traceback, the first and last
HEAD_TAIL failures, at most MAX_RANKS ranks followed, error files read up to 1 MiB.
"""
from __future__ import annotations

import json
import os
import re
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from .lines import strip_ansi
from .logs import SPECIFICITY, TEXT_CAP, Event, first_failure, parse_line, split_rank

MAX_FRAMES = 5
MAX_RANKS = 256
HEAD_TAIL = 32
ERROR_FILE = "error.json"
ERROR_FILE_MAX = 1 << 20
#: Error files looked at per attempt: torchrun writes one per local rank.
MAX_ERROR_FILES = 256

_FRAME = re.compile(r'File "(.{1,500})", line (\d+)(?:, in (.{1,200}))?')
_CARETS = re.compile(r"^[\s^~]*$")
_TRACEBACK = "Traceback (most recent call last):"
_FAILURE_KINDS = frozenset(SPECIFICITY) - {"traceback"}
_TIE_ORDER = {**SPECIFICITY, "transient": len(SPECIFICITY)}


@dataclass(frozen=True)
class RootCause:
    """The failure that started it all, as the user is shown it and the journal keeps it."""

    kind: str                    # the attempt's failure kind (cuda_oom, user_error, ...)
    message: str                 # 'torch.OutOfMemoryError: CUDA out of memory. ...' (capped)
    rank: int | None = None
    exception: str = ""          # 'torch.OutOfMemoryError'; '' when the evidence is no exception
    frames: tuple[str, ...] = ()  # the last frames, innermost last: 'File "x.py", line 9, in f\n  code'
    source: str = "output"       # 'output', 'error file <path>', or 'guardrun' (it stopped the job)
    timestamp: float | None = None  # the error file's, seconds since the epoch

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RootCause":
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in names}
        values["frames"] = tuple(values.get("frames") or ())
        return cls(**values)

    def lines(self) -> list[str]:
        """The one-screen summary: at most 3 + 2 × MAX_FRAMES lines."""
        where = f" on rank {self.rank}" if self.rank is not None else ""
        out = [f"root cause: {self.kind}{where} (from {self.source})", f"  {self.message}"]
        if self.frames:
            out.append("  last frames:")
            out += ["    " + part for frame in self.frames for part in frame.split("\n")]
        return out


@dataclass(frozen=True)
class Trace:
    """A failure line seen in the output, with the frames of the traceback it ended."""

    event: Event
    frames: tuple[str, ...] = ()


#: Lines after a traceback's exception line that still belong to its message
#: (NCCL's 'ncclInvalidUsage: ...' / 'Last error:' lines follow DistBackendError's).
MESSAGE_LINES = 8


@dataclass
class _RankState:
    active: bool = False
    frame_indent: int = -1
    frames: deque = field(default_factory=lambda: deque(maxlen=MAX_FRAMES))
    ended: tuple[str, ...] = ()   # the frames of the traceback that ended last
    since_end: int = MESSAGE_LINES


class TraceTracker:
    """Follows tracebacks per rank, line by line, and keeps the failure lines with their frames.

    Fed from one thread (the output reader's); read with `traces()` under the caller's lock.
    """

    def __init__(self) -> None:
        self._ranks: dict[int | None, _RankState] = {}
        self._quiet = MESSAGE_LINES + 1  # lines since any rank was inside a traceback
        self._head: list[Trace] = []
        self._tail: deque[Trace] = deque(maxlen=HEAD_TAIL)

    def feed(self, line: str, events: Sequence[Event]) -> None:
        if not events and self._quiet > MESSAGE_LINES and 'File "' not in line and _TRACEBACK not in line:
            return  # the common case, kept cheap: no traceback anywhere near
        self._quiet += 1
        rank, body = split_rank(line)
        frames = self._follow(rank, body)
        if any(state.active or state.since_end <= MESSAGE_LINES for state in self._ranks.values()):
            self._quiet = 0
        for event in events:
            if event.kind in _FAILURE_KINDS:
                self._keep(Trace(event, frames))

    def traces(self) -> tuple[Trace, ...]:
        return (*self._head, *self._tail)

    def _keep(self, trace: Trace) -> None:
        if len(self._head) < HEAD_TAIL:
            self._head.append(trace)
        else:
            self._tail.append(trace)

    def _state(self, rank: int | None) -> _RankState | None:
        state = self._ranks.get(rank)
        if state is None and len(self._ranks) < MAX_RANKS:
            state = self._ranks[rank] = _RankState()
        return state

    def _follow(self, rank: int | None, body: str) -> tuple[str, ...]:
        """Advance `rank`'s traceback by one line; the frames when this line ended it."""
        state = self._state(rank)
        if state is None:
            return ()
        stripped = body.lstrip()
        indent = len(body) - len(stripped)
        if _TRACEBACK in body:
            state.active, state.frame_indent, state.ended = True, -1, ()
            state.frames.clear()
            return ()
        if stripped.startswith('File "'):
            found = _FRAME.match(stripped)
            if found is not None:
                if not state.active:  # a SyntaxError's report has frames and no header
                    state.active = True
                    state.frames.clear()
                state.frame_indent = indent
                state.frames.append(_frame_text(found))
                return ()
        if not state.active:
            state.since_end += 1
            return state.ended if state.since_end <= MESSAGE_LINES else ()
        if not stripped or _CARETS.match(stripped):
            return ()
        if state.frames and indent > state.frame_indent:
            last = state.frames[-1]
            if "\n" not in last:  # the frame's source line; later ones are locals or notes
                state.frames[-1] = f"{last}\n  {stripped[:TEXT_CAP]}"
            return ()
        state.active = False
        state.ended, state.since_end = tuple(state.frames), 0
        return state.ended


def _frame_text(found: re.Match) -> str:
    path, line, func = found.group(1), found.group(2), found.group(3)
    return f'File "{path}", line {line}' + (f", in {func}" if func else "")


def parse_traceback(text: str) -> tuple[str, ...]:
    """The last frames of a formatted traceback (an error file's py_callstack)."""
    tracker = TraceTracker()
    frames: tuple[str, ...] = ()
    for line in text.splitlines()[-2000:]:
        frames = tracker._follow(None, strip_ansi(line)) or frames
    return frames


# -- error files ---------------------------------------------------------------------------

def read_error_files(root: Path) -> list[RootCause]:
    """Every readable torchelastic error file under `root` (the attempt's folder)."""
    causes = []
    for path in _error_files(root):
        cause = _read_error_file(path)
        if cause is not None:
            causes.append(cause)
    return causes


def _error_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("stacks",)]
        if ERROR_FILE in files:
            found.append(Path(folder) / ERROR_FILE)
            if len(found) >= MAX_ERROR_FILES:
                break
    return found


def _read_error_file(path: Path) -> RootCause | None:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read(ERROR_FILE_MAX))
    except (OSError, ValueError):
        return None  # unreadable or cut off: the output still tells
    message = data.get("message") if isinstance(data, dict) else None
    info: dict = {}
    if isinstance(message, dict):
        info = message.get("extraInfo") or {}
        message = message.get("message")
    if not isinstance(message, str) or not message.strip():
        return None
    frames = parse_traceback(str(info.get("py_callstack") or ""))
    return RootCause(kind=_kind_of(message), message=_cap(message), rank=_rank_of(path),
                     exception=_exception_of(message), frames=frames,
                     source=f"error file {path}", timestamp=_number(info.get("timestamp")))


def _rank_of(path: Path) -> int | None:
    """torchrun's layout: .../attempt_<n>/<local rank>/error.json."""
    folder = path.parent
    if folder.name.isdigit() and folder.parent.name.startswith("attempt_"):
        return int(folder.name)
    return None


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _cap(text: str) -> str:
    text = strip_ansi(text.strip().splitlines()[0] if text.strip() else "")
    return text if len(text) <= TEXT_CAP else text[:TEXT_CAP - 1] + "…"


def _kind_of(message: str) -> str:
    found = first_failure(parse_line(_cap(message)))
    return found.kind if found is not None and found.kind in _FAILURE_KINDS else "error"


_EXCEPTION_NAME = re.compile(r"^([A-Za-z_][\w.]{0,200}):\s")


def _exception_of(message: str) -> str:
    found = _EXCEPTION_NAME.match(message.strip())
    return found.group(1) if found else ""


# -- whose fault ---------------------------------------------------------------------------

#: A library's cache or build machinery. An error raised in there is about the library's own
#: files, not the user's, and a retry can succeed. Both captured here for real
#: (tests/data/outputs/real_torch_file_baton_*): FileNotFoundError in file_baton.py's release()
#: when another job removed the build lock; ImportError of the half-built .so from
#: cpp_extension.py when a waiter woke because the lock vanished before the build was done.
_MACHINERY = ("torch/utils/file_baton.py", "torch/utils/cpp_extension.py", "torch/_inductor/",
              "triton/runtime/", "deepspeed/ops/op_builder/", "filelock/")
#: Cache folders a message may name ('/root/.cache/torch_extensions/py311_cpu/x/lock').
_CACHES = ("torch_extensions", "torchinductor_", "/.triton/", "/.cache/")
#: Exceptions that say the code is wrong when the user's own code raised them: a retry of
#: the same code fails the same way. (RuntimeError and OSError are not among them: torch's
#: C++ errors and the machine's surface as those in the user's frames too.)
_CODE_ERRORS = frozenset({"NameError", "AttributeError", "TypeError", "KeyError", "IndexError",
                          "ValueError", "UnboundLocalError", "NotImplementedError", "ZeroDivisionError"})
_LIBRARY_PATHS = ("site-packages/", "dist-packages/", "/lib/python3")


def judged(events: Sequence[Event], traces: Iterable[Trace]) -> list[Event]:
    """The events with each failure's owner judged from its traceback, not its class alone.

    A user_error (FileNotFoundError, ImportError) raised inside a library's cache or build
    machinery is transient; a plain exception (ValueError, KeyError, ...) raised in the
    user's own code is a user_error. The classifier (policy.classify) reads these.
    """
    frames = {trace.event: trace.frames for trace in traces}
    return [_judge(event, frames.get(event, ())) for event in events]


def _judge(event: Event, frames: tuple[str, ...]) -> Event:
    if event.kind == "user_error" and _in_machinery(event.text, frames):
        return replace(event, kind="transient")
    if (event.kind == "error" and frames and event.detail.rsplit(".", 1)[-1] in _CODE_ERRORS
            and not _is_library(_frame_path(frames[-1]))):
        return replace(event, kind="user_error")
    return event


def _in_machinery(text: str, frames: tuple[str, ...]) -> bool:
    """The innermost frame that is a file (not `<frozen importlib._bootstrap>`) is in a
    library's build machinery, or the message names a cache folder."""
    if any(cache in text for cache in _CACHES):
        return True
    paths = [path for path in map(_frame_path, frames) if not path.startswith("<")]
    return bool(paths) and any(part in paths[-1] for part in _MACHINERY)


def _frame_path(frame: str) -> str:
    found = _FRAME.match(frame)
    return found.group(1) if found else ""


def _is_library(path: str) -> bool:
    return not path or path.startswith("<") or any(part in path for part in _LIBRARY_PATHS)


# -- choosing ------------------------------------------------------------------------------

def pick_root_cause(error_files: Iterable[RootCause], traces: Iterable[Trace], evidence: str = "") -> RootCause | None:
    """The root cause: the earliest error file, else the traceback behind `evidence`.

    `evidence` is the line the classifier based the attempt's kind on, so the cause shown
    agrees with the kind; without it, the most telling failure line (`first_failure`).
    Error files written in the same second (their resolution) are told apart by how much
    their exception says, a transient one last (a peer's closed connection or a collective's
    timeout is the echo of another rank's death, real_gpu_torchrun_oom_record_tee.txt),
    then by rank.
    """
    files = list(error_files)
    if files:
        return min(files, key=lambda c: (c.timestamp if c.timestamp is not None else float("inf"),
                                         _TIE_ORDER.get(c.kind, len(_TIE_ORDER)),
                                         c.rank if c.rank is not None else 1 << 30))
    kept = list(traces)
    match = next((t for t in kept if evidence and t.event.text == evidence), None)
    if match is None:
        found = first_failure(trace.event for trace in kept)
        match = next((t for t in kept if t.event is found), None)
    return from_event(match.event, match.frames) if match is not None else None


def from_event(event: Event, frames: tuple[str, ...] = ()) -> RootCause:
    _, body = split_rank(event.text)
    message = _cap(body)
    return RootCause(kind=event.kind, message=message, rank=event.rank,
                     exception=event.detail if _exception_of(message) == event.detail else "",
                     frames=frames)


def settle(cause: RootCause | None, kind: str, evidence: str, decided_by_guardrun: bool) -> RootCause:
    """The cause as recorded: stamped with the attempt's failure kind.

    When guardrun itself stopped the job (a memory limit, a hang, a NaN) its own evidence
    is the cause, unless the output's cause says the same kind (a NaN line with its rank).
    """
    if cause is not None and (not decided_by_guardrun or _same_kind(cause.kind, kind)):
        return replace(cause, kind=kind)
    return RootCause(kind=kind, message=_cap(evidence) or kind, source="guardrun")


def compile_cause(kind: str, extensions: Sequence[str], evidence: str) -> RootCause:
    """A host limit crossed while the tree compiled torch extensions: the compile is the cause.

    Measured here: DeepSpeed's JIT build of deepspeed_shm_comm took ~3.9 GiB PSS for ~30 s
    inside a 2-rank job's tree, 3.5 times the 1.1 GiB of the same run with the op built.
    """
    names = ", ".join(extensions)
    return RootCause(kind=kind, source="guardrun",
                     message=_cap(f"compiling torch extension {names}: pre-build it or raise the "
                                  f"limit ({evidence})" if evidence else
                                  f"compiling torch extension {names}: pre-build it or raise the limit"))


def _same_kind(event_kind: str, failure_kind: str) -> bool:
    return event_kind == failure_kind or (event_kind, failure_kind) == ("nan", "nan_loss")


def root_cause_lines(data) -> list[str]:
    """A recorded root cause's lines; one line saying so when the record is not readable."""
    try:
        return RootCause.from_dict(data).lines()
    except (TypeError, ValueError, AttributeError):
        return ["root cause: (the recorded one cannot be read)"]
