"""A launcher's traceback for the signal that stopped it, folded into one console line.

When guardrun stops an attempt it sends the launcher SIGTERM, and torchrun's agent answers
with ~30 lines of its own monitor loop ending in `SignalException: Process N got signal: 15`
(a SIGINT: `KeyboardInterrupt`): a newcomer reads a crash where there is none. Those
frames say nothing about the job, so the terminal gets the last line only, with how long
the traceback was; output.log keeps every line, and root causes are read from it.

`SignalFold` sees each line before the console: a traceback is held (a few dozen lines,
written at once) until its first unindented line, its exception: a signal's, the one line;
any other exception, every held line as it was. Lines of another tag (`[default0]:` of a
worker) pass while one is held. Held lines are bounded (MAX_HELD): past it, they go out.
Only once guardrun is stopping the attempt itself (`arm`) is anything held: a signal
someone else sent, or a KeyboardInterrupt of the job's own, is shown whole.
"""
from __future__ import annotations

import re

#: Lines held for one traceback at most; a longer one is shown whole.
MAX_HELD = 200
#: A traceback's first line, after a tag or none (`[default0]:`, `[rank1]: `).
_HEADER = re.compile(r"^((?:\[[^\]]+\]: ?)*)Traceback \(most recent call last\):$")
#: The exception a launcher raises for a signal: torchrun's agent, or Python's for SIGINT.
SIGNAL_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?SignalException: .*got signal: \d+$|^KeyboardInterrupt$")


def is_signal_exception(line: str) -> bool:
    return SIGNAL_EXCEPTION.match(line) is not None


class SignalFold:
    """Lines in, the lines to show out (see the module doc)."""

    def __init__(self, armed: bool = False) -> None:
        self._tag: str | None = None  # the held traceback's prefix ('' when untagged)
        self._held: list[str] = []
        self._armed = armed           # set by the watch loop's thread, read by the reader's

    def arm(self) -> None:
        """guardrun is about to signal the launcher: its signal's traceback is folded from now."""
        self._armed = True

    def feed(self, line: str) -> list[str]:
        if self._tag is None:
            header = _HEADER.match(line) if self._armed else None
            if header is None:
                return [line]
            self._tag, self._held = header.group(1), [line]
            return []
        if not line.startswith(self._tag):
            return [line]  # another rank's line, while this traceback is held
        body = line[len(self._tag):]
        if body[:1].isspace() and len(self._held) < MAX_HELD:
            self._held.append(line)
            return []
        held, tag = self._held + [line], self._tag
        self._tag, self._held = None, []
        if is_signal_exception(body):
            return [f"{tag}{body} (its {len(held)}-line traceback is in output.log)"]
        return held

    def end(self) -> list[str]:
        """What is still held when the output ends: shown as it was."""
        held, self._tag, self._held = self._held, None, []
        return held
