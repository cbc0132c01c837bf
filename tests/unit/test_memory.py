"""Memory sources and the tree walk on a fake /proc: exact figures, races, fallbacks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guardrun.supervisor.watch import proctree
from guardrun.supervisor.watch.memory import HostMemory, ProcfsMemory, TreeSample
from guardrun.supervisor.watch.proctree import ProcId, ProcReader, ProcTree

PAGE = 4096
KIB = 1024


@dataclass
class Proc:
    ppid: int
    resident: int = 0   # pages
    shared: int = 0     # pages
    threads: dict[int, list[int]] = field(default_factory=dict)  # tid -> children
    state: str = "S"
    comm: str = "python"
    start: int = 1000
    rollup: str | None = None
    smaps: str | None = None


def stat_line(pid: int, proc: Proc) -> str:
    fields = [proc.state, proc.ppid, pid, pid] + [0] * 13 + [max(1, len(proc.threads)), 0, proc.start]
    fields += [0] * (49 - len(fields))
    return f"{pid} ({proc.comm}) " + " ".join(map(str, fields)) + "\n"


def make_proc(root: Path, procs: dict[int, Proc], children_files: bool = True,
              meminfo: str = "MemTotal: 16000000 kB\nMemFree: 1000 kB\nMemAvailable: 8000000 kB\n") -> str:
    """A fake procfs: <pid>/{stat,statm,task/<tid>/children,smaps_rollup,smaps}, meminfo."""
    root.mkdir(exist_ok=True)
    (root / "meminfo").write_text(meminfo)
    for pid, proc in procs.items():
        base = root / str(pid)
        base.mkdir()
        (base / "stat").write_text(stat_line(pid, proc))
        size = 0 if proc.state == "Z" else proc.resident + 1000
        (base / "statm").write_text(f"{size} {proc.resident} {proc.shared} 1 0 {proc.resident} 0\n")
        for tid, kids in (proc.threads or {pid: []}).items():
            (base / "task" / str(tid)).mkdir(parents=True)
            if children_files:
                (base / "task" / str(tid) / "children").write_text("".join(f"{k} " for k in kids))
        if proc.rollup is not None:
            (base / "smaps_rollup").write_text(proc.rollup)
        if proc.smaps is not None:
            (base / "smaps").write_text(proc.smaps)
    return str(root)


def family() -> dict[int, Proc]:
    """100 -> 101 (thread 100) and 102 (forked by its second thread 110); 101 -> 103."""
    return {
        100: Proc(1, resident=1000, shared=400, threads={100: [101], 110: [102]}),
        101: Proc(100, resident=500, shared=100, threads={101: [103]}),
        102: Proc(100, resident=300, shared=300),
        103: Proc(101, resident=50, shared=0),
        200: Proc(1, resident=9999),  # a stranger
    }


def anon(*pairs: tuple[int, int]) -> int:
    return sum(resident - shared for resident, shared in pairs) * PAGE


def test_sample_tree_sums_resident_minus_shared_over_every_thread_s_children(tmp_path):
    memory = ProcfsMemory(make_proc(tmp_path / "proc", family()), page_size=PAGE)
    sample = memory.sample_tree(100)
    assert sample == TreeSample(pids=(100, 101, 102, 103),
                                anon=anon((1000, 400), (500, 100), (300, 300), (50, 0)))


@pytest.mark.parametrize("children_files", [True, False], ids=["children-files", "stat-scan"])
def test_the_stat_scan_fallback_finds_the_same_tree(tmp_path, children_files):
    memory = ProcfsMemory(make_proc(tmp_path / "proc", family(), children_files), page_size=PAGE)
    sample = memory.sample_tree(100)
    assert sorted(sample.pids) == [100, 101, 102, 103]
    assert sample.anon == anon((1000, 400), (500, 100), (300, 300), (50, 0))


def test_adopted_orphans_count_and_excluded_children_of_the_adopter_do_not(tmp_path):
    procs = family()
    procs[50] = Proc(1, threads={50: [100, 300], 51: [310]})  # guardrun, a subreaper
    procs[300] = Proc(50, resident=70, threads={300: [301]})  # an orphan re-parented to it
    procs[301] = Proc(300, resident=7)
    procs[310] = Proc(50, resident=5000)                       # guardrun's own helper
    memory = ProcfsMemory(make_proc(tmp_path / "proc", procs), page_size=PAGE)
    sample = memory.sample_tree(100, adopter=50, exclude=(310,))
    assert sorted(sample.pids) == [100, 101, 102, 103, 300, 301]
    assert sample.anon == anon((1000, 400), (500, 100), (300, 300), (50, 0), (70, 0), (7, 0))


def test_after_the_launcher_is_reaped_the_adopted_are_still_found(tmp_path):
    procs = {50: Proc(1, threads={50: [300]}), 300: Proc(50, resident=70)}
    tree = ProcTree(make_proc(tmp_path / "proc", procs), adopter=50)
    assert tree.pids(None) == [300]


def test_a_child_listed_but_already_gone_is_skipped(tmp_path):
    procs = family()
    procs[103].threads = {103: [104]}  # 104 exited: no /proc/104 any more
    memory = ProcfsMemory(make_proc(tmp_path / "proc", procs), page_size=PAGE)
    assert memory.sample_tree(100).pids == (100, 101, 102, 103)


def test_a_process_vanishing_between_its_reads_is_skipped_with_its_children(tmp_path):
    root = make_proc(tmp_path / "proc", family())
    (Path(root) / "101" / "statm").unlink()  # exited between the parent's children read and ours
    assert ProcfsMemory(root, page_size=PAGE).sample_tree(100).pids == (100, 102)


@pytest.mark.parametrize("failing, left", [
    (b"statm", (100, 102)),                # the process exited: it and its children are skipped
    (b"task/101/children", (100, 101, 102)),  # only that thread exited: its children are missed
])
def test_esrch_mid_walk(tmp_path, monkeypatch, failing, left):
    root = make_proc(tmp_path / "proc", family())
    real_read = ProcReader.read

    def read(self, pid, name, size):
        if pid == 101 and name == failing:
            raise ProcessLookupError(3, "No such process")
        return real_read(self, pid, name, size)
    monkeypatch.setattr(ProcReader, "read", read)
    assert ProcfsMemory(root, page_size=PAGE).sample_tree(100).pids == left


def test_a_root_that_is_gone_gives_an_empty_sample(tmp_path):
    memory = ProcfsMemory(make_proc(tmp_path / "proc", family()), page_size=PAGE)
    assert memory.sample_tree(999) == TreeSample(pids=(), anon=0)


@pytest.mark.parametrize("children_files", [True, False], ids=["children-files", "stat-scan"])
def test_zombies_count_as_gone_and_are_reported_for_reaping(tmp_path, children_files):
    procs = family()
    procs[103] = Proc(101, state="Z")
    root = make_proc(tmp_path / "proc", procs, children_files)
    assert sorted(ProcfsMemory(root, page_size=PAGE).sample_tree(100).pids) == [100, 101, 102]
    walk = ProcTree(root).walk(100)
    assert sorted(walk.live) == [100, 101, 102] and walk.zombies == (103,)
    assert sorted(walk.values, key=lambda ident: ident.pid) == [ProcId(100, 1000), ProcId(101, 1000),
                                                                ProcId(102, 1000)]


def test_a_process_whose_main_thread_exited_is_alive_and_its_memory_counts(tmp_path):
    """pthread_exit in main: stat says Z with 2 threads and statm reads zeros (seen on 6.18)."""
    procs = {100: Proc(1, state="Z", threads={100: [], 105: [106]}), 106: Proc(100, resident=10)}
    root = make_proc(tmp_path / "proc", procs)
    (Path(root) / "100" / "task" / "105" / "statm").write_text("3000 800 200 1 0 800 0\n")
    sample = ProcfsMemory(root, page_size=PAGE).sample_tree(100)
    assert sample == TreeSample((100, 106), anon((800, 200), (10, 0)))
    assert ProcTree(root).walk(100).live == (100, 106)


def test_comm_with_spaces_and_parentheses_parses(tmp_path):
    procs = {100: Proc(1, comm="pt_main ) (x", start=4242)}
    assert ProcTree(make_proc(tmp_path / "proc", procs)).walk(100).values == (ProcId(100, 4242),)


def test_held_fds_are_closed_once_their_process_leaves_the_tree(tmp_path):
    root = Path(make_proc(tmp_path / "proc", family()))
    tree = ProcTree(str(root))
    tree.walk(100)
    held = tree.files.held()
    assert held >= 4  # a stat and a children file per process at least
    (root / "101" / "task" / "101" / "children").write_text("")
    (root / "100" / "task" / "100" / "children").write_text("")  # 101 and 103 left the tree
    tree.walk(100)
    assert tree.files.held() < held
    tree.files.close()
    assert tree.files.held() == 0


def test_the_held_fd_limit_is_respected(tmp_path):
    tree = ProcTree(make_proc(tmp_path / "proc", family()))
    tree.files.limit = 2
    assert tree.pids(100) == [100, 101, 102, 103]
    assert tree.files.held() == 2


ROLLUP = """55be9289a000-7ffca735a000 ---p 00000000 00:00 0    [rollup]
Rss:                1720 kB
Pss:                 509 kB
Pss_Anon:            112 kB
Pss_File:            397 kB
Pss_Shmem:            30 kB
Anonymous:           112 kB
"""

OLD_ROLLUP = """00400000-7ffca735a000 ---p 00000000 00:00 0    [rollup]
Rss:                1720 kB
Pss:                 509 kB
Anonymous:           112 kB
"""

SMAPS = """55563b532000-55563b534000 r--p 00000000 fe:00 260386    /usr/bin/python3
Size:                  8 kB
Rss:                   8 kB
Pss:                   8 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
55563b534000-55563b53a000 rw-p 00000000 00:00 0    [heap]
Size:                 24 kB
Rss:                  24 kB
Pss:                  12 kB
Anonymous:            24 kB
7f0000000000-7f0000100000 rw-s 00000000 00:01 77    /dev/shm/torch_1234
Rss:                 100 kB
Pss:                  50 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00001000 fe:00 9    /usr/lib/libfoo.so
Rss:                  40 kB
Pss:                  20 kB
Anonymous:            10 kB
"""


def test_pss_is_pss_anon_plus_pss_shmem_of_the_rollup(tmp_path):
    procs = {100: Proc(1, rollup=ROLLUP), 101: Proc(100, rollup=ROLLUP.replace("112 kB", "8 kB"))}
    memory = ProcfsMemory(make_proc(tmp_path / "proc", procs))
    assert memory.pss([100, 101]) == (112 + 30 + 8 + 30) * KIB


@pytest.mark.parametrize("rollup", [None, OLD_ROLLUP], ids=["no-rollup", "rollup-without-pss-anon"])
def test_pss_falls_back_to_summing_smaps(tmp_path, rollup):
    # heap 12 (all anonymous) + shmem 50 (whole) + libfoo's anonymous share 20 * 10/40 = 5
    memory = ProcfsMemory(make_proc(tmp_path / "proc", {100: Proc(1, rollup=rollup, smaps=SMAPS)}))
    assert memory.pss([100]) == (12 + 50 + 5) * KIB


def test_pss_of_a_pid_that_exited_counts_zero(tmp_path):
    memory = ProcfsMemory(make_proc(tmp_path / "proc", {100: Proc(1, rollup=ROLLUP)}))
    assert memory.pss([100, 4242]) == (112 + 30) * KIB


def test_host_reads_memtotal_and_memavailable(tmp_path):
    memory = ProcfsMemory(make_proc(tmp_path / "proc", {}))
    assert memory.host() == HostMemory(total=16000000 * KIB, available=8000000 * KIB)


def test_host_estimates_available_on_kernels_without_it(tmp_path):
    meminfo = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n"
    memory = ProcfsMemory(make_proc(tmp_path / "proc", {}, meminfo=meminfo))
    assert memory.host() == HostMemory(total=1000 * KIB, available=420 * KIB)


def test_parse_stat_splits_after_the_last_parenthesis():
    assert proctree.parse_stat(b"7 (a) b) Z 1 7 7 0")[:2] == [b"Z", b"1"]


def _loadavg(root: str, last_pid: int) -> None:
    (Path(root) / "loadavg").write_text(f"0.10 0.20 0.30 1/180 {last_pid}\n")


def test_while_no_pid_is_handed_out_the_known_tree_is_probed_without_reading_children(tmp_path):
    root = make_proc(tmp_path / "proc", family())
    _loadavg(root, 5000)
    memory = ProcfsMemory(root, page_size=PAGE)
    assert memory.sample_tree(100).pids == (100, 101, 102, 103)
    # 103 forks 104 behind a children file we no longer read: invisible while loadavg
    # says no pid was handed out (which a real fork cannot do), so the reuse is real
    make_proc(Path(root), {104: Proc(103, resident=70)})
    (Path(root) / "103" / "task" / "103" / "children").write_text("104 ")
    assert memory.sample_tree(100).pids == (100, 101, 102, 103)
    # an exit needs no new pid: it shows at once (102 turns zombie; the file is rewritten in
    # place, as a held fd of the fake would otherwise read the old inode)
    zombie = Proc(100, state="Z")
    (Path(root) / "102" / "stat").write_text(stat_line(102, zombie))
    (Path(root) / "102" / "statm").write_text("0 0 0 0 0 0 0\n")
    assert memory.sample_tree(100).pids == (100, 101, 103)
    _loadavg(root, 5001)  # the fork handed out a pid: the next sample walks again
    sample = memory.sample_tree(100)
    assert sample.pids == (100, 101, 103, 104)
    assert sample.anon == anon((1000, 400), (500, 100), (50, 0), (70, 0))


def test_without_loadavg_every_sample_walks(tmp_path):
    root = make_proc(tmp_path / "proc", family())
    memory = ProcfsMemory(root, page_size=PAGE)
    assert memory.sample_tree(100).pids == (100, 101, 102, 103)
    make_proc(Path(root), {104: Proc(103, resident=70)})
    (Path(root) / "103" / "task" / "103" / "children").write_text("104 ")
    assert memory.sample_tree(100).pids == (100, 101, 102, 103, 104)
