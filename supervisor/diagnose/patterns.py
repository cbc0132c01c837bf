"""The recipe's own regexes: progress and loss for jobs no built-in parser reads, and success.

`progress: {step_regex, loss_regex}` turns a job's own log format into the same events
`logs.parse_line` gives for HF Trainer, tqdm and mmengine, so the status line, NaN
detection and hang detection work on it unchanged. `success: {regex}` is the line that
must be seen before an exit 0 counts (XTuner's `xtuner train` exits 0 after a failed run).

A user's pattern runs on every line, so it sees only the line's first SCAN_CAP
characters: a pattern that backtracks badly costs at most that much per line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from guardrun.launcher.spec import ProgressPatterns, SuccessEvidence

from .logs import SCAN_CAP, TEXT_CAP, Event, parse_line


@dataclass(frozen=True)
class Patterns:
    step: re.Pattern | None = None
    loss: re.Pattern | None = None
    success: re.Pattern | None = None

    @classmethod
    def from_recipe(cls, progress: ProgressPatterns | None, success: SuccessEvidence | None) -> "Patterns":
        def compiled(text: str | None) -> re.Pattern | None:
            return re.compile(text) if text else None
        return cls(step=compiled(progress.step_regex) if progress else None,
                   loss=compiled(progress.loss_regex) if progress else None,
                   success=compiled(success.regex) if success else None)

    def events(self, line: str) -> tuple[Event, ...]:
        """The line's events: the built-in recognisers' (logs.parse_line) and the recipe's.

        The recipe's own regexes win: with a `step_regex` the built-in progress events are
        dropped (a script that prints both its own counter and, say, an inner `step 3` of
        something else is followed by the counter the user named), with a `loss_regex` the
        built-in losses. Built-in NaN events stay: they are a safety net, not a reading.
        """
        builtin = parse_line(line)
        if self.step is None and self.loss is None:
            return builtin
        dropped = ({"progress"} if self.step is not None else set()) | ({"loss"} if self.loss is not None else set())
        return tuple(e for e in builtin if e.kind not in dropped) + self.scan(line)

    def scan(self, line: str) -> tuple[Event, ...]:
        """Progress, loss and nan events from the recipe's regexes (none when they do not match)."""
        if self.step is None and self.loss is None:
            return ()
        head = line[:SCAN_CAP]
        events = []
        step = total = None
        if self.step is not None and (found := self.step.search(head)):
            step, total = _int(found.group(1)), _int(found.group(2)) if self.step.groups > 1 else None
            if step is not None:
                events.append(Event("progress", _text(head), step=step, total=total))
        if self.loss is not None and (found := self.loss.search(head)):
            loss = _float(found.group(1))
            if loss is not None:
                kind = "loss" if math.isfinite(loss) else "nan"
                events.append(Event(kind, _text(head), step=step, loss=loss,
                                    detail="loss" if kind == "nan" else ""))
        return tuple(events)

    def succeeded(self, line: str) -> bool:
        return self.success is not None and self.success.search(line[:SCAN_CAP]) is not None


def _text(line: str) -> str:
    text = line.strip()
    return text if len(text) <= TEXT_CAP else text[:TEXT_CAP - 1] + "…"


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
