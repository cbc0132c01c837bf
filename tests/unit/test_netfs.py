"""Issue 16: a checkpoint folder inotify cannot follow (NFS, another node's writes) is rescanned."""
from __future__ import annotations

from pathlib import Path

from guardrun.supervisor.watch.netfs import NETWORK_MAGICS, Rescanner, fs_magic, why_rescan

EXT4, NFS = 0xEF53, 0x6969


def test_nfs_is_rescanned_even_for_one_node():
    assert why_rescan(NFS, 1) == "the checkpoint folder is on nfs, where inotify misses other machines' writes"


def test_another_node_writing_is_rescanned_on_a_local_filesystem():
    assert why_rescan(EXT4, 2) == "a 2-node job: another node may write the checkpoints"


def test_one_node_on_a_local_filesystem_follows_with_inotify():
    assert why_rescan(EXT4, 1) == "" and why_rescan(None, 1) == ""


def test_the_magic_is_read_from_the_nearest_existing_parent(tmp_path):
    here = fs_magic(tmp_path)
    assert isinstance(here, int) and here not in NETWORK_MAGICS   # the suite's tmp is local
    assert fs_magic(tmp_path / "out" / "not-yet") == here
    assert fs_magic(Path("/proc")) == 0x9FA0                       # PROC_SUPER_MAGIC: statfs is real


def test_the_rescanner_reports_entries_written_between_two_looks(tmp_path):
    out = tmp_path / "out"
    looks = Rescanner(out, every=2.0)
    assert looks.changed(0.0) == []                        # no folder yet
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"x" * 10)
    assert looks.changed(1.0) == []                        # not due
    assert looks.changed(2.0) == ["checkpoint-2"]
    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (out / "trainer_log.jsonl").write_text("{}\n")
    assert looks.changed(4.0) == ["checkpoint-2", "trainer_log.jsonl"]
    assert looks.changed(6.0) == []                        # quiet: nothing changed since
    (out / "trainer_log.jsonl").unlink()
    assert looks.changed(8.0) == ["trainer_log.jsonl"]     # a removal is a change too
