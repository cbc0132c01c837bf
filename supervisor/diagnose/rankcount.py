"""How many ranks an attempt really ran, from what its output says.

A gpus rung tells the job a rank count (torchrun's --nproc-per-node, a tool's
`ranks_env`), but a `launcher: command` tool may start its own torchrun and ignore it.
Then every gpus rung relaunches the same job (issue 13 §6). The evidence is in the
output, read here so the ladder can skip those rungs (launcher/ladder.py):

- `world size: 2` / `world_size=2` / `WORLD_SIZE=2`: LLaMA-Factory's "Process rank: 0,
  world size: 2, device: cpu" line, and scripts that print their environment;
- torchrun's and PyTorch's rank prefixes `[default1]:` / `[rank1]:` (rank 1 means 2 ranks at least);
- the HF Trainer's "***** Running training *****" block: "Total train batch size (w.
  parallel, distributed & accumulation) = 16" over "Instantaneous batch size per device
  = 2" × "Gradient Accumulation steps = 4" is 2 ranks.

Pure over lines; `ranks_in_file` reads an attempt's output.log (its head is kept whatever
its size: logs.max_size keeps the first part, where these lines are).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

_WORLD = re.compile(r"\bworld[ _]size\s*[:=]\s*(\d+)", re.IGNORECASE)
_PREFIX = re.compile(r"^\[(?:default|rank)(\d+)\]:")
_TOTAL = re.compile(r"Total train batch size \(w\. parallel, distributed & accumulation\) = (\d+)")
_PER_DEVICE = re.compile(r"Instantaneous batch size per device = (\d+)")
_ACCUM = re.compile(r"Gradient Accumulation steps = (\d+)")
#: Lines read from the start of output.log: the rank lines come before training starts.
HEAD_LINES = 20000


def ranks_seen(lines: Iterable[str]) -> int | None:
    """The most ranks the output shows, or None when it shows no rank count."""
    best: int | None = None
    total = per_device = None
    for line in lines:
        found = [int(m.group(1)) for m in _WORLD.finditer(line)]
        prefix = _PREFIX.match(line)
        if prefix:
            found.append(int(prefix.group(1)) + 1)
        for pattern, value in ((_TOTAL, "total"), (_PER_DEVICE, "per_device")):
            match = pattern.search(line)
            if match and value == "total":
                total = int(match.group(1))
            elif match:
                per_device = int(match.group(1))
        accum = _ACCUM.search(line)
        if accum and total and per_device and total % (per_device * int(accum.group(1))) == 0:
            found.append(total // (per_device * int(accum.group(1))))
        if found:
            best = max([best or 0, *found])
    return best


def ranks_in_file(path: Path) -> int | None:
    """`ranks_seen` of an output.log's first HEAD_LINES lines; None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = (line for _, line in zip(range(HEAD_LINES), handle))
            return ranks_seen(head)
    except OSError:
        return None
