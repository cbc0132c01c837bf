"""A plain script's own progress print, read without a recipe regex (issue 13 §5).

`step 12 loss 0.53`, `Step 12/40`, `iter 12/40 loss=...`, `epoch 1 step 12`: what training
loops written by hand print. logs.parse_line asks this module for every line that passed
its precheck and is no tqdm bar; the answer costs a split of the line's head, no regex
(~9 µs for such a line, ~6 µs for prose naming an epoch, timeit on this machine).
"""
from __future__ import annotations

#: A plain script's progress line is read from its first PLAIN_HEAD characters only.
PLAIN_HEAD = 200
_PLAIN_SEPARATORS = str.maketrans({c: " " for c in ",|[]()=:;"})
_NOT_PLAIN = frozenset("{'\"")
_COUNTERS = {"step": "step", "iter": "step", "iteration": "step", "epoch": "epoch"}
_LOSSES = frozenset({"loss", "train_loss"})
#: Words a logging prefix puts before the message ('2026-12-01 09:00:00,123 INFO step 3 ...').
_PREFIXES = frozenset({"info", "debug", "warning", "train", "training"})


def plain_progress(body: str) -> tuple[int | None, int | None, int | None, str | None] | None:
    """(step, total, epoch, loss text) of a plain script's progress line: `step 12 loss 0.53`,
    `Step 12/40`, `iter 12/40 loss=0.5`, `epoch 1 step 12`. Without a regex: the line's head
    split into words. `body` is the line after its rank tag (logs.split_rank); it must begin
    with the counter (after a time stamp or a level name), so a step named in prose ('saving
    at step 12') is no progress; and a step needs a total, an epoch or a loss beside it: a
    banner ('Step 1: loading the data') taken for progress would hide a crash loop (the
    crash-loop guard counts only attempts without progress). None when the line is not one."""
    if body.lstrip()[:1] in _NOT_PLAIN:
        return None  # an HF log dict, a JSON line: read by logs._metrics
    words = body[:PLAIN_HEAD].replace(" / ", "/").translate(_PLAIN_SEPARATORS).lower().split()
    start = 0
    while start < len(words) and start < 8 and (words[start] in _PREFIXES or not _has_letter(words[start])):
        start += 1
    if start >= len(words) or words[start] not in _COUNTERS:
        return None
    step = total = epoch = loss = None
    for index in range(start, min(len(words) - 1, start + 16)):
        word, value = words[index], words[index + 1].rstrip(".")
        counter = _COUNTERS.get(word)
        if counter is not None:
            count, _, of = value.partition("/")
            if not count.isdigit() or not count.isascii():
                continue
            if counter == "epoch":
                epoch = int(count) if epoch is None else epoch
            elif step is None:
                step, total = int(count), int(of) if of.isdigit() and of.isascii() else None
        elif word in _LOSSES and loss is None:
            loss = value
    if loss is None and (step is None or (total is None and epoch is None)):
        return None  # 'Step 1: loading the data' is a script's banner, not a training step
    return step, total, epoch, loss


def _has_letter(word: str) -> bool:
    return any(c.isalpha() for c in word)
