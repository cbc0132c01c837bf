"""Per-rank output: the launcher flags that keep it, and following DeepSpeed's rank files."""
from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from conftest import wait_until
from guardrun.launcher.command import rank_logs
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.diagnose.output import MAX_EVIDENCE, OutputReader
from guardrun.supervisor.diagnose.ranklogs import RankLogs


@pytest.mark.parametrize("launcher,argv,env", [
    ("torchrun", ("--log-dir", "/s/attempts/3/ranks", "--redirects", "3", "--tee", "3"), ()),
    ("deepspeed", ("--enable_each_rank_log", "/s/attempts/3/ranks"), ()),
    ("python", (), (("TORCHELASTIC_ERROR_FILE", "/s/attempts/3/error.json"),)),
])
def test_rank_log_flags(launcher, argv, env):
    assert rank_logs(launcher, Path("/s/attempts/3")) == (argv, env)
    assert rank_logs(launcher, None) == ((), ())


def test_rank_files_are_followed_as_they_grow_and_drained_at_the_end(tmp_path):
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()

    def on_line(rank: int, line: str) -> None:
        with lock:
            seen.append((rank, line))

    follower = RankLogs(tmp_path, on_line).start()
    rank0 = open(tmp_path / "20261125105900_rank0.log", "w")
    rank0.write("loading\n")
    rank0.flush()
    wait_until(lambda: (0, "loading") in seen, timeout=5, what="rank 0's first line")
    rank1 = open(tmp_path / "20261125105900_rank1.log", "w")
    rank1.write("[rank1] Traceback (most recent call last):\npartial")
    rank1.flush()
    rank0.write("x" * 200_000 + "\n")
    rank0.close()
    rank1.write(" end\n")
    rank1.close()
    assert follower.stop(timeout=5)
    assert (1, "partial end") in seen
    [(_, long)] = [item for item in seen if item[1].startswith("xxx")]
    assert long.endswith("…[cut]") and len(long) < 70_000


def test_rank_lines_reach_the_reader_tagged_with_their_rank(tmp_path):
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / "20261125_rank3.log").write_text(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    sink = io.StringIO()
    reader = OutputReader(io.BytesIO(b"launcher line\n"), tmp_path / "output.log", Console(sink, tty=False),
                          "[1] ", rank_logs=tmp_path / "ranks").start()
    wait_until(lambda: reader.progress().lines == 2, timeout=5, what="both lines")
    assert reader.join(timeout=5)
    [event] = reader.evidence()
    assert (event.kind, event.rank) == ("cuda_oom", 3)
    assert "[1] [rank3]: torch.OutOfMemoryError" in sink.getvalue()
    assert "[rank3]: torch.OutOfMemoryError" in (tmp_path / "output.log").read_text()


def test_evidence_keeps_the_first_failures_through_a_flood(tmp_path):
    lines = [b"torch.OutOfMemoryError: CUDA out of memory. first\n"]
    lines += [b"RuntimeError: echo %d\n" % i for i in range(10_000)]
    reader = OutputReader(io.BytesIO(b"".join(lines)), tmp_path / "output.log", Console(io.StringIO(), quiet=True),
                          "").start()
    assert reader.join(timeout=30)
    evidence = reader.evidence()
    assert len(evidence) == MAX_EVIDENCE
    assert evidence[0].text.endswith("first") and evidence[-1].text == "RuntimeError: echo 9999"
