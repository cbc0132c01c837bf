"""The Plan: one launch configuration, the recipe with the taken rungs applied; the Decision.

A leaf module (it imports nothing of the project) so that both the ladder, which makes
Plans and Decisions, and the command builder, which renders them, can use it without
importing each other: the ladder needs the rendered command to tell a rung that changes
nothing (launchdiff.py), and the command builder needs the Plan type.
"""
from __future__ import annotations

from dataclasses import dataclass

#: The rung keys a plan takes over as they are (a Rung and a Plan both have them).
SWITCHES = ("gradient_checkpointing", "zero_stage", "zero3_offload", "offload_pin_memory",
            "gather_16bit_on_save", "save_only_model", "dataloader_workers")


@dataclass(frozen=True)
class Plan:
    """One launch configuration: the recipe with the taken rungs applied."""

    rungs: tuple[int, ...]          # 1-based numbers of the taken rungs, in the order taken
    ranks: int
    gpu_ids: tuple[int, ...] | None  # None: let the launcher see what it sees (CPU ranks)
    per_device: int | None = None
    grad_accum: int | None = None
    global_batch: int | None = None
    target_global_batch: int | None = None
    lr: float | None = None
    gradient_checkpointing: bool | None = None
    zero_stage: int | None = None
    zero3_offload: bool | None = None
    offload_pin_memory: bool | None = None
    gather_16bit_on_save: bool | None = None
    save_only_model: bool | None = None
    dataloader_workers: int | None = None
    args: tuple[tuple[str, object], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    skipped: tuple[int, ...] = ()    # rungs taken that changed nothing (launchdiff.py): not relaunched

    @property
    def rung(self) -> int:
        """The number of the last rung taken; 0 is the recipe as written."""
        return self.rungs[-1] if self.rungs else 0


@dataclass(frozen=True)
class Decision:
    """What to launch next, or why nothing more should be launched."""

    plan: Plan | None
    give_up: str = ""  # non-empty when the ladder has nothing left for the last failure


def batch_words(plan: Plan, nodes: int = 1) -> str:
    """`micro-batch 4 × accumulation 2 × 2 = global 16` (× ranks), with `× 2 nodes` on more
    than one machine: the plan's arithmetic is per node (every node runs the same plan)."""
    per_node = "" if nodes == 1 else f" × {nodes} nodes"
    return (f"micro-batch {plan.per_device} × accumulation {plan.grad_accum} × {plan.ranks}"
            f"{per_node} = global {job_global_batch(plan, nodes)}")


def job_global_batch(plan: Plan, nodes: int) -> int | None:
    """The whole job's global batch: the plan's (per node) times the nodes."""
    return None if plan.global_batch is None else plan.global_batch * nodes
