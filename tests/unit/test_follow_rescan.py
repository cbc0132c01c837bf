"""Issue 16: where inotify sees no other machine's writes (NFS, another node's checkpoints), the
follower finds a new checkpoint by rescanning the folder at an interval."""
from __future__ import annotations

import json
from pathlib import Path

from fakes import FakeClock

from guardrun.supervisor.core.context import Context
from guardrun.supervisor.watch.follow import CheckpointFollower
from guardrun.supervisor.watch.netfs import RESCAN_EVERY

#: A weights file safetensors' header check accepts: 8-byte length, the JSON header, the data.
HEADER = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
WEIGHTS = len(HEADER).to_bytes(8, "little") + HEADER + b"\0\0\0\0"


def save(out: Path, step: int, state: bool = True) -> None:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_model.safetensors").write_bytes(WEIGHTS)
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_another_nodes_checkpoint_is_found_by_rescanning(tmp_path):
    out, clock, saved = tmp_path / "out", FakeClock(), []
    out.mkdir()
    follower = CheckpointFollower(out, None, Context(clock, lambda event, **f: saved.append((event, f)),
                                                     lambda _: None), settle=1.0, nodes=2)
    follower.poll()
    assert follower._observer is None and follower._rescanner is not None   # no inotify here
    save(out, 2, state=False)                                   # the save is under way...
    clock.sleep(RESCAN_EVERY)
    assert follower.poll().newest is None
    save(out, 2)                                                # ...and done: trainer_state.json last
    for _ in range(3):                                          # two looks, then one settle
        clock.sleep(RESCAN_EVERY)
        seen = follower.poll()
    assert seen.newest is not None and seen.newest.step == 2
    assert [e for e, f in saved] == ["checkpoint.saved"] and saved[0][1]["step"] == 2


def test_one_node_on_a_local_folder_still_uses_inotify(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    follower = CheckpointFollower(out, None, Context(FakeClock(), lambda *a, **f: None, lambda _: None))
    follower.poll()
    try:
        assert follower._observer is not None and follower._rescanner is None
    finally:
        follower.stop()
