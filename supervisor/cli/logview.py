"""`guardrun logs JOB [-f] [-n N] [--since D] [--attempt N] [--rank R]`: an attempt's output,
whole, its last N lines, or followed.

Each attempt's merged output is `attempts/<N>/output.log`. A rank's own output is
`attempts/<N>/ranks/<R>.log` where a launcher wrote one; otherwise the rank's lines are
picked out of output.log by the prefix launchers put on them: `[R]`, `[rankR]` (torch's
own prefix on error lines), `[defaultR]:` (torchrun `--tee`, role "default").

Following reads what is there, then polls for more; it moves on to a newer attempt when
one starts (unless `--attempt` pinned one) and ends when the supervisor is gone and the
log is read to its end.

An attempt with nothing to show says why, from the journal (`explain_empty`): it never
started (the spawn failed, and how), or it ran fewer ranks than the rank asked for.
guardrun keeps no time per output line: `--since` picks the attempts whose log was written
in that window (`written_since`), each shown whole (or its last N lines).

A damaged state dir is read around: an entry of attempts/ that is not an attempt number
is skipped and said once; a log that cannot be read (a directory, a symlink, EIO) raises
LogUnreadable, which `guardrun logs` turns into one error line and exit 1.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TextIO

from ..core import events
from ..record.journalread import Skipped, read_events
from ..record.statedir import open_regular, reason

#: How often a followed log is polled for new lines (a person is reading it).
FOLLOW_POLL = 0.2


@dataclass(frozen=True)
class LogChoice:
    attempt: int
    path: Path
    prefixes: tuple[str, ...] | None  # keep only lines starting with one of these (a rank)
    note: str                          # said to the user on stderr, when not empty


class LogUnreadable(Exception):
    """An attempt's log exists but cannot be read; the message names it and says why."""


def attempts(job_dir: Path, say: Callable[[str], None] | None = None) -> list[int]:
    """The attempt numbers of a job, oldest first; `say` hears about what was skipped."""
    folder = job_dir / "attempts"
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as err:
        if say is not None:
            say(f"{folder}: {'not a directory' if isinstance(err, NotADirectoryError) else reason(err)}: "
                "no attempts read")
        return []
    # isascii: '²'.isdigit() is True, and int('²') raises.
    odd = sorted(name for name in names if not (name.isascii() and name.isdigit()))
    if odd and say is not None:
        one = len(odd) == 1
        say(f"{folder}: skipped {len(odd)} {'entry that is' if one else 'entries that are'} not an "
            f"attempt number ({', '.join(map(repr, odd[:3]))}{', ...' if len(odd) > 3 else ''})")
    return sorted(int(name) for name in names if name.isascii() and name.isdigit())


def _open_log(path: Path) -> TextIO:
    """The log for reading (FileNotFoundError if absent), LogUnreadable if it cannot be read."""
    try:
        return open(open_regular(path), encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise
    except OSError as err:
        raise LogUnreadable(f"cannot read {path}: {reason(err)}") from None


def rank_prefixes(rank: int) -> tuple[str, ...]:
    return (f"[{rank}]", f"[rank{rank}]", f"[default{rank}]")


def pick_log(job_dir: Path, attempt: int, rank: int | None) -> LogChoice:
    """Which file to read, and which lines of it, for an attempt and maybe one rank."""
    folder = job_dir / "attempts" / str(attempt)
    if rank is None:
        return LogChoice(attempt, folder / "output.log", None, "")
    own = folder / "ranks" / f"{rank}.log"
    if own.is_file():
        return LogChoice(attempt, own, None, "")
    prefixes = rank_prefixes(rank)
    note = (f"attempt {attempt} has no per-rank log ({own.relative_to(job_dir)}): showing the "
            f"lines of output.log that start with {' or '.join(prefixes)}")
    return LogChoice(attempt, folder / "output.log", prefixes, note)


def keep(line: str, prefixes: tuple[str, ...] | None) -> bool:
    return prefixes is None or line.startswith(prefixes)


def copy(choice: LogChoice, out: TextIO, last: int | None = None) -> int:
    """Write the chosen lines of the whole file (its `last` N only) to `out`; how many."""
    try:
        with _open_log(choice.path) as handle:
            written = _write(out, (line for line in handle if keep(line, choice.prefixes)), last)
    except FileNotFoundError:
        return 0
    except OSError as err:  # EIO while reading
        raise LogUnreadable(f"cannot read {choice.path}: {reason(err)}") from None
    out.flush()
    return written


def _write(out: TextIO, lines: Iterable[str], last: int | None) -> int:
    """Write `lines` (only the last `last` of them, when given); how many were written."""
    kept = deque(lines, maxlen=last) if last is not None else lines
    written = 0
    for line in kept:
        out.write(line)
        written += 1
    return written


def written_since(job_dir: Path, numbers: Iterable[int], since: float) -> list[int]:
    """The attempts whose output.log was last written at or after `since` (epoch seconds)."""
    def written(number: int) -> float:
        try:
            return (job_dir / "attempts" / str(number) / "output.log").stat().st_mtime
        except OSError:
            return float("-inf")
    return [number for number in numbers if written(number) >= since]


def explain_empty(job_dir: Path, attempt: int, rank: int | None) -> str:
    """Why an attempt shows no line, from the journal: `attempt 2 never started (spawn failed:
    ...)`, `attempt 2 ran rank 0 only`; '' when the journal does not say."""
    started = failed = None
    quiet = Skipped(job_dir / "events.jsonl")  # damage is the journal readers' to report
    for event in read_events(job_dir, quiet):
        if event.get("attempt") != attempt:
            continue
        if event.get("event") == events.journaled(events.ATTEMPT_STARTED):
            started = event
        elif event.get("event") == events.journaled(events.ATTEMPT_SPAWN_FAILED):
            failed = event
    if failed is not None:
        return f"attempt {attempt} never started (spawn failed: {failed.get('program')}: {failed.get('error')})"
    ranks = started.get("ranks") if started else None
    if rank is not None and isinstance(ranks, int) and not isinstance(ranks, bool) and 0 < ranks <= rank:
        return f"attempt {attempt} ran " + ("rank 0 only" if ranks == 1 else f"ranks 0-{ranks - 1} only")
    return ""


class Follower:
    """`logs -f`: print lines as they are written, across attempts, until the run is over."""

    def __init__(self, job_dir: Path, choice: LogChoice, *, pinned: bool, rank: int | None,
                 alive: Callable[[], bool], sleep: Callable[[float], None], out: TextIO,
                 say: Callable[[str], None], last: int | None = None):
        self.job_dir, self.choice, self.pinned, self.rank = job_dir, choice, pinned, rank
        self.alive, self.sleep, self.out, self.say = alive, sleep, out, say
        self._last = last  # `-n N -f`: only the last N lines of what is there at the start
        self._handle: TextIO | None = None
        self._partial = ""

    def run(self) -> None:
        try:
            while True:
                running = self.alive()  # looked at before reading: what it wrote last is read
                if self._drain():
                    continue
                newer = [n for n in attempts(self.job_dir) if n > self.choice.attempt]
                if newer and not self.pinned:
                    self._switch(newer[0])
                elif not running:
                    self._flush_partial()
                    return
                else:
                    self.sleep(FOLLOW_POLL)
        finally:
            if self._handle is not None:
                self._handle.close()

    def _drain(self) -> bool:
        """Write the complete lines added since the last look; whether there were any."""
        if self._handle is None:
            try:
                self._handle = _open_log(self.choice.path)
            except FileNotFoundError:
                return False
        try:
            data = self._handle.read()
        except OSError as err:
            raise LogUnreadable(f"cannot read {self.choice.path}: {reason(err)}") from None
        if not data:
            return False
        lines = (self._partial + data).split("\n")
        self._partial = lines.pop()
        _write(self.out, (line + "\n" for line in lines if keep(line, self.choice.prefixes)), self._last)
        self._last = None
        self.out.flush()
        return True

    def _switch(self, attempt: int) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._flush_partial()
        self.choice = pick_log(self.job_dir, attempt, self.rank)
        self.say(f"attempt {attempt} started")
        if self.choice.note:
            self.say(self.choice.note)

    def _flush_partial(self) -> None:
        """A last line without its newline (the writer is done with this file)."""
        if self._partial and keep(self._partial, self.choice.prefixes):
            self.out.write(self._partial + "\n")
            self.out.flush()
        self._partial = ""
