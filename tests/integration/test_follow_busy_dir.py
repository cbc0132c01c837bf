"""The checkpoint follower keeps up while the trainer writes into checkpoints.dir every step.

LLaMA-Factory appends `trainer_log.jsonl` in its output_dir at every log step (issue 13 §4):
with one settle time for the whole folder, the folder never went quiet and no checkpoint
was validated until the job ended. Here a real writer process appends a file in the folder
every 100 ms while HF-style checkpoints appear beside it; the follower, polled at the
default sample interval, must record each within 2 s of its last write.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.core.context import Context
from guardrun.supervisor.watch.follow import CheckpointFollower
from conftest import wait_until

INTERVAL = 0.5   # the recipe's default sample interval: how often the watch loop polls
WITHIN = 2.0

APPENDER = """
import sys, time
path = sys.argv[1]
step = 0
while True:
    step += 1
    with open(path, "a") as handle:
        handle.write('{"current_steps": %d, "loss": 0.5}\\n' % step)
    time.sleep(0.1)
"""


def write_checkpoint(root: Path, step: int) -> float:
    """An HF checkpoint written as the Trainer does, file by file, trainer_state.json last;
    the clock reading after its last write."""
    path = root / f"checkpoint-{step}"
    path.mkdir()
    save_file({"w": torch.ones(16, 16)}, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text("{}")
    torch.save({"state": {}}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 15}))
    return time.monotonic()


class Recorder:
    def __init__(self) -> None:
        self.saved: dict[int, float] = {}
        self.events: list[tuple[str, dict]] = []

    def __call__(self, name: str, **fields) -> None:
        self.events.append((name, fields))
        if name == "checkpoint.saved":
            self.saved[fields["step"]] = time.monotonic()


def test_every_checkpoint_is_recorded_within_2s_while_a_file_is_appended_every_100ms(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    log = out / "trainer_log.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, str(log)])
    recorder = Recorder()
    follower = CheckpointFollower(out, None, Context(MonotonicClock(), recorder, print))
    done = threading.Event()

    def watch_loop() -> None:
        while not done.is_set():
            follower.poll()
            done.wait(INTERVAL)

    loop = threading.Thread(target=watch_loop, daemon=True)
    loop.start()
    try:
        wait_until(lambda: log.exists() and log.stat().st_size > 100, timeout=10, what="the appender to write")
        for step in (5, 10, 15):
            written = write_checkpoint(out, step)
            wait_until(lambda step=step: step in recorder.saved, timeout=WITHIN + 3, what=f"checkpoint-{step} recorded")
            assert recorder.saved[step] - written <= WITHIN, (step, recorder.saved[step] - written)
        assert writer.poll() is None  # the folder was busy the whole time
    finally:
        done.set()
        loop.join(5)
        writer.kill()
        writer.wait(5)
        follower.stop()
    assert not [e for e in recorder.events if e[0] == "checkpoint.incomplete"]


def test_a_checkpoint_still_being_written_is_not_reported_incomplete(tmp_path):
    """A settled neighbour triggers a rescan while checkpoint-10 is half written: it is not
    yet 'incomplete' (that is for a save the job died in), and it is recorded once done."""
    out = tmp_path / "out"
    out.mkdir()
    recorder = Recorder()
    follower = CheckpointFollower(out, None, Context(MonotonicClock(), recorder, print), settle=0.3)
    follower.poll()  # the watch starts
    write_checkpoint(out, 5)
    half = out / "checkpoint-10"
    half.mkdir()
    save_file({"w": torch.ones(4, 4)}, half / "adapter_model.safetensors")
    keep_busy = threading.Event()

    def busy() -> None:   # checkpoint-10 keeps being written
        while not keep_busy.is_set():
            (half / "optimizer.pt.part").write_bytes(b"x" * 16)
            keep_busy.wait(0.05)

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        wait_until(lambda: follower.poll().newest is not None, timeout=5, what="checkpoint-5 recorded")
        assert follower.seen.newest.step == 5 and follower.seen.incomplete == ()
    finally:
        keep_busy.set()
        thread.join(5)
    (half / "optimizer.pt.part").unlink()
    (half / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    wait_until(lambda: follower.poll().newest.step == 10, timeout=5, what="checkpoint-10 recorded")
    follower.stop()
    assert not [e for e in recorder.events if e[0] == "checkpoint.incomplete"]


def test_the_followers_own_reads_are_no_activity(tmp_path):
    """Validation opens the checkpoint's files; watchdog reports those opens. Counted as
    changes they made a rescan loop (each rescan's reads due for the next) and kept
    `last_activity` fresh, so a hung job beside a checkpoint never looked quiet."""
    out = tmp_path / "out"
    out.mkdir()
    recorder = Recorder()
    follower = CheckpointFollower(out, None, Context(MonotonicClock(), recorder, print), settle=0.2)
    follower.poll()
    write_checkpoint(out, 5)
    wait_until(lambda: follower.poll().newest is not None, timeout=5, what="checkpoint-5 recorded")
    quiet_since = follower.last_activity
    rescans = []
    original = follower._rescan
    follower._rescan = lambda busy=frozenset(): (rescans.append(busy), original(busy))
    deadline = time.monotonic() + 6 * follower.settle   # the window watched: several settle times
    while time.monotonic() < deadline:
        follower.poll()
        time.sleep(0.05)   # the watch loop's interval, scaled down
    activity, looked = follower.last_activity, list(rescans)
    follower.stop()
    assert activity == quiet_since
    assert looked == []


def test_a_checkpoint_written_before_the_watch_began_is_recorded_beside_a_busy_log(tmp_path):
    """The folder's own 'modified' events come with every append (watchdog reports the
    parent of each closed file): they must not keep the first look at the folder waiting."""
    out = tmp_path / "out"
    out.mkdir()
    log = out / "trainer_log.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", APPENDER, str(log)])
    recorder = Recorder()
    try:
        wait_until(lambda: log.exists(), timeout=10, what="the appender to write")
        follower = CheckpointFollower(out, None, Context(MonotonicClock(), recorder, print))
        write_checkpoint(out, 5)          # after the follower's first scan, before its watch
        started = time.monotonic()
        wait_until(lambda: follower.poll().newest is not None, timeout=WITHIN + 3, interval=INTERVAL,
                   what="checkpoint-5 recorded")
        assert recorder.saved[5] - started <= WITHIN
        assert writer.poll() is None
    finally:
        writer.kill()
        writer.wait(5)
    follower.stop()


def test_saves_closer_together_than_the_settle_time_are_each_recorded(tmp_path):
    """The tiny LLaMA-Factory run saved checkpoint-5..30 within 0.3 s: one rescan sees them
    all valid, and the journal must still get each, oldest first."""
    out = tmp_path / "out"
    out.mkdir()
    recorder = Recorder()
    follower = CheckpointFollower(out, None, Context(MonotonicClock(), recorder, print), settle=0.3)
    follower.poll()
    for step in (5, 10, 15):
        write_checkpoint(out, step)
    def recorded() -> bool:
        follower.poll()
        return 15 in recorder.saved

    wait_until(recorded, timeout=5, what="checkpoint-15 recorded")
    follower.stop()
    assert [f["step"] for name, f in recorder.events if name == "checkpoint.saved"] == [5, 10, 15]
