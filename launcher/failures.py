"""The failure vocabulary shared by the ladder (launcher) and the policy (supervisor).

A leaf module: it imports nothing from guardrun. DESIGN.md's table says what evidence
each kind stands for and what the usual next step is.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(str, enum.Enum):
    """Why an attempt ended. The values are the names users write in a ladder's `on:`."""

    HOST_OOM = "host_oom"
    CUDA_OOM = "cuda_oom"
    SAVE_FAILED = "save_failed"
    NAN_LOSS = "nan_loss"
    HANG = "hang"
    TRANSIENT = "transient"
    USER_ERROR = "user_error"
    INTERRUPTED = "interrupted"
    UNKNOWN = "unknown"
    NODE_LOST = "node_lost"  # multi-node: a node's word never reached the shared folder in time
    PEER_STOPPED = "peer_stopped"  # multi-node: this node stopped its part because another stopped its own

    def __str__(self) -> str:  # so f"{kind}" prints host_oom, not Kind.HOST_OOM
        return self.value


#: Kinds a ladder rung may answer (`on:`). The others never change the configuration.
RUNG_KINDS = frozenset({Kind.HOST_OOM, Kind.CUDA_OOM, Kind.SAVE_FAILED, Kind.NAN_LOSS,
                        Kind.HANG, Kind.TRANSIENT, Kind.UNKNOWN})

#: Kinds for which running the same configuration again is pointless: with no lighter
#: rung left for them, guardrun gives up instead of looping (torchrun's failure mode).
DEGRADING = frozenset({Kind.HOST_OOM, Kind.CUDA_OOM})

#: Kinds that end the run at once, whatever restarts remain.
FATAL = frozenset({Kind.USER_ERROR, Kind.INTERRUPTED, Kind.NODE_LOST})


@dataclass(frozen=True)
class Failure:
    """One attempt's end, as the journal records it and the ladder reads it."""

    kind: Kind
    evidence: str = ""
    attempt: int = 0
    step: int | None = None  # last training step seen, if any
    ranks_seen: int | None = None  # ranks the output showed (supervisor/diagnose/rankcount.py), if any
