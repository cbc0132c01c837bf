"""The Prometheus textfile: what it says (read back with prometheus-client's parser, as a
scraper would), the `metrics:` recipe key, and a directory that cannot be written (a real
read-only or full tmpfs, a missing folder) costing the metrics only, said once."""
from __future__ import annotations

import io
import math
import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from guardrun.launcher.gpus import GpuProcess
from guardrun.launcher.recipe import RecipeError, load_recipe
from guardrun.launcher.spec import Metrics
from guardrun.launcher.units import GIB
from guardrun.supervisor.core import events
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.core.states import State
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.record.journal import Journal
from guardrun.supervisor.record.metrics import RESTART_KINDS, Textfile, render
from guardrun.supervisor.run.loop import Supervisor
from guardrun.supervisor.watch import proc
from tests.helpers_mount import tmpfs

from fakes import FakeGpuSource  # noqa: E402
from recipes_util import make_recipe  # noqa: E402

RUNNING = {"state": "running", "attempt": 2, "rung": 1, "step": 40, "loss": 0.25,
           "tree_memory": 3 << 30, "tree_limit": 8 << 30, "available": 20 << 30,
           "checkpoint_mtime": 1764590000.5, "state_since": 1764590100.25,
           "restarts": {"host_oom": 1},
           "gpu_memory": [{"gpu": 0, "used": 30 << 30, "total": 80 << 30, "limit": 76 << 30},
                          {"gpu": 1, "used": 2 << 30, "total": 80 << 30, "limit": None}]}


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value, every sample the text format parser finds."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, job: str = "demo", **labels) -> float:
    return samples(text)[(name, tuple(sorted({"job": job, **labels}.items())))]


def test_a_running_job_parses_with_every_number_it_has():
    text = render("demo", RUNNING)
    assert value(text, "guardrun_job_attempt") == 2
    assert value(text, "guardrun_job_rung") == 1
    assert value(text, "guardrun_job_step") == 40
    assert value(text, "guardrun_job_loss") == 0.25
    assert value(text, "guardrun_job_memory_bytes") == 3 << 30
    assert value(text, "guardrun_job_memory_limit_bytes") == 8 << 30
    assert value(text, "guardrun_host_memory_available_bytes") == 20 << 30
    assert value(text, "guardrun_checkpoint_timestamp_seconds") == 1764590000.5
    assert value(text, "guardrun_job_state_change_timestamp_seconds") == 1764590100.25
    assert value(text, "guardrun_gpu_memory_bytes", gpu="0") == 30 << 30
    assert value(text, "guardrun_gpu_memory_bytes", gpu="1") == 2 << 30
    assert value(text, "guardrun_gpu_memory_limit_bytes", gpu="0") == 76 << 30
    assert ("guardrun_gpu_memory_limit_bytes", (("gpu", "1"), ("job", "demo"))) not in samples(text)


def test_the_state_is_one_gauge_per_state_one_of_them_1():
    text = render("demo", RUNNING)
    states = {str(s): value(text, "guardrun_job_state", state=str(s)) for s in State}
    assert states == {str(s): (1 if s is State.RUNNING else 0) for s in State}


def test_restarts_are_a_counter_per_kind_each_there_from_0():
    families = {f.name: f for f in text_string_to_metric_families(render("demo", RUNNING))}
    assert families["guardrun_restarts"].type == "counter"
    counts = {s.labels["kind"]: s.value for s in families["guardrun_restarts"].samples}
    assert counts == {kind: (1 if kind == "host_oom" else 0) for kind in RESTART_KINDS}
    assert "user_error" not in counts and "interrupted" not in counts  # those end the run


def test_facts_not_known_yet_have_no_sample_and_every_metric_has_help_and_type():
    text = render("demo", {"state": "starting", "restarts": {}, "step": None})
    names = {name for name, _ in samples(text)}
    assert names == {"guardrun_job_state", "guardrun_restarts_total"}
    for family in text_string_to_metric_families(render("demo", RUNNING)):
        assert family.documentation and family.type in ("gauge", "counter"), family.name
    assert text.endswith("\n")


def test_no_sample_has_a_timestamp_and_help_never_names_the_job():
    """node_exporter skips a file with a timestamp; two jobs' files must agree on HELP."""
    for line in render("demo", RUNNING).splitlines():
        if line.startswith("# HELP"):
            assert "demo" not in line
        elif not line.startswith("#"):
            assert len(line.rsplit("} ", 1)[1].split()) == 1, line
    help_lines = [line for line in render("other", RUNNING).splitlines() if line.startswith("#")]
    assert help_lines == [line for line in render("demo", RUNNING).splitlines() if line.startswith("#")]


def test_a_nan_loss_and_an_odd_job_name_still_parse():
    text = render('we"ird\\job', {**RUNNING, "loss": float("nan")})
    [loss] = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "guardrun_job_loss"]
    assert math.isnan(loss.value) and loss.labels["job"] == 'we"ird\\job'


# -- the file ----------------------------------------------------------------------------

class Heard:
    def __init__(self):
        self.said: list[str] = []
        self.events: list[tuple[str, dict]] = []

    def say(self, text: str) -> None:
        self.said.append(text)

    def emit(self, event: str, **fields) -> None:
        self.events.append((event, fields))


def textfile(directory: Path, heard: Heard) -> Textfile:
    return Textfile(directory, "demo", heard.say, heard.emit)


def test_the_file_is_replaced_whole_readable_by_others_with_no_temp_left(tmp_path):
    heard = Heard()
    writer = textfile(tmp_path, heard)
    writer.write(RUNNING)
    writer.write({**RUNNING, "step": 41})
    assert [p.name for p in tmp_path.iterdir()] == ["guardrun_demo.prom"]
    assert (tmp_path / "guardrun_demo.prom").stat().st_mode & 0o777 == 0o644
    assert value((tmp_path / "guardrun_demo.prom").read_text(), "guardrun_job_step") == 41
    assert heard.said == [] and heard.events == []


def test_a_missing_dir_is_said_once_then_its_return_is_said(tmp_path):
    heard = Heard()
    writer = textfile(tmp_path / "textfile", heard)
    for _ in range(3):
        writer.write(RUNNING)
    assert heard.said == [f"metrics: cannot write {tmp_path}/textfile/guardrun_demo.prom: No such file or "
                          "directory; the job goes on, retrying at every state write"]
    assert [name for name, _ in heard.events] == [events.METRICS_FAILED]
    (tmp_path / "textfile").mkdir()
    writer.write(RUNNING)
    writer.write(RUNNING)
    assert heard.said[1:] == [f"metrics: {tmp_path}/textfile/guardrun_demo.prom is written again"]
    assert [name for name, _ in heard.events] == [events.METRICS_FAILED, events.METRICS_RESUMED]
    assert value((tmp_path / "textfile" / "guardrun_demo.prom").read_text(), "guardrun_job_attempt") == 2


def test_a_read_only_mount_costs_the_metrics_only(tmp_path):
    """Root writes through a 0555 folder: a read-only mount is what really refuses it."""
    heard = Heard()
    with tmpfs(tmp_path / "ro", "1m", "ro") as mount:
        writer = textfile(mount, heard)
        writer.write(RUNNING)
        writer.write(RUNNING)
        assert heard.events == [(events.METRICS_FAILED, {"path": str(mount / "guardrun_demo.prom"),
                                                         "reason": "Read-only file system"})]
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        writer.write(RUNNING)
        assert [name for name, _ in heard.events] == [events.METRICS_FAILED, events.METRICS_RESUMED]
        assert [p.name for p in mount.iterdir()] == ["guardrun_demo.prom"]


def test_a_full_disk_keeps_the_last_whole_file_and_leaves_no_temp(tmp_path):
    heard = Heard()
    with tmpfs(tmp_path / "small", "64k") as mount:
        writer = textfile(mount, heard)
        writer.write(RUNNING)
        before = (mount / "guardrun_demo.prom").read_text()
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill what is left
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        writer.write({**RUNNING, "step": 99})
        assert [name for name, _ in heard.events] == [events.METRICS_FAILED]
        assert "No space left on device" in heard.said[0]
        assert (mount / "guardrun_demo.prom").read_text() == before
        assert sorted(p.name for p in mount.iterdir()) == ["filler", "guardrun_demo.prom"]
        filler.unlink()
        writer.write({**RUNNING, "step": 99})
        assert value((mount / "guardrun_demo.prom").read_text(), "guardrun_job_step") == 99


# -- the recipe key ----------------------------------------------------------------------

def recipe(tmp_path: Path, metrics: str) -> Path:
    (tmp_path / "train.py").write_text("print('hi')\n")
    path = tmp_path / "job.yaml"
    path.write_text(f"launcher: python\nscript: train.py\n{metrics}\n")
    return path


def test_metrics_textfile_is_a_folder_relative_to_workdir_that_need_not_exist(tmp_path):
    loaded = load_recipe(recipe(tmp_path, "metrics: {textfile: prom}"))
    assert loaded.metrics == Metrics(textfile=tmp_path / "prom")
    assert load_recipe(recipe(tmp_path, "")).metrics is None


@pytest.mark.parametrize("body, message", [
    ("metrics: {}", "job.yaml:3: metrics.textfile: required key missing: the folder node_exporter's"),
    ("metrics: {textfil: x}", "job.yaml:3: metrics.textfil: unknown key"),
    ("metrics: /var/lib/node_exporter", "job.yaml:3: metrics: expected a mapping"),
])
def test_a_bad_metrics_key_names_file_line_and_key(tmp_path, body, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe(tmp_path, body))
    assert message in str(err.value)


# -- through the loop: the job's GPUs ----------------------------------------------------

def test_the_loop_writes_the_jobs_gpus_with_their_limit_and_the_end_state(tmp_path, state_dir, monkeypatch):
    """Two fake GPUs, another user's process on gpu0: the job runs on gpu1, and only gpu1
    is in the file, with limits.vram (90%) resolved against its 80 GiB."""
    monkeypatch.setattr(proc, "set_child_subreaper", lambda: None)  # pytest must not adopt
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    began = tmp_path / "began"  # the job's 3 GiB on gpu1 from its start on
    (tmp_path / "job.py").write_text(f"import time\nopen({str(began)!r}, 'w').close()\n"
                                     "print('step 1/2 loss 0.5', flush=True)\ntime.sleep(0.5)\n")
    recipe = make_recipe(tmp_path, f"""
        launcher: python
        script: job.py
        gpus: 1
        limits: {{vram: 90%}}
        monitor: {{interval: 0.05}}
        metrics: {{textfile: {tmp_path / "prom"}}}
        """, script="unused.py")
    (tmp_path / "prom").mkdir()
    source = FakeGpuSource(count=2, used=lambda index: 3 * GIB if index == 0 or began.exists() else 0,
                           procs={0: [GpuProcess(999999, 3 * GIB)]})
    journal = Journal(recipe.name)
    out = io.StringIO()
    code = Supervisor(recipe, journal, Console(out, tty=False), MonotonicClock(), gpus=source).run()
    journal.close()
    assert code == 0, out.getvalue()
    found = {}
    for family in text_string_to_metric_families((tmp_path / "prom" / "guardrun_job.prom").read_text()):
        for s in family.samples:
            found.setdefault(s.name, {})[s.labels.get("gpu", s.labels.get("state"))] = s.value
    assert found["guardrun_gpu_memory_bytes"] == {"1": 3 * GIB}
    assert found["guardrun_gpu_memory_limit_bytes"] == {"1": int(80 * GIB * 0.9)}
    assert found["guardrun_job_state"]["finished"] == 1 and sum(found["guardrun_job_state"].values()) == 1
    assert found["guardrun_job_step"] == {None: 1} and found["guardrun_job_loss"] == {None: 0.5}


def test_a_job_waiting_for_gpus_is_in_the_file_as_starting(tmp_path, state_dir, monkeypatch):
    """Before the first state change: the file is read while the loop waits for a GPU."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    recipe = make_recipe(tmp_path, f"""
        launcher: python
        script: train.py
        gpus: 1
        wait_for_gpus: 0.2s
        metrics: {{textfile: {tmp_path}}}
        """)
    prom = tmp_path / "guardrun_job.prom"
    seen: list[str] = []

    class Watched(FakeGpuSource):
        def devices(self):
            if self.calls == 1:  # the second look: the wait has begun
                seen.append(prom.read_text())
            return super().devices()

    source = Watched(count=1, procs={0: [GpuProcess(999999, 20 * GIB)]})
    journal = Journal(recipe.name)
    code = Supervisor(recipe, journal, Console(io.StringIO(), tty=False), MonotonicClock(), gpus=source).run()
    journal.close()
    assert code == 1 and len(seen) == 1
    assert value(seen[0], "guardrun_job_state", job="job", state="starting") == 1
    assert value(prom.read_text(), "guardrun_job_state", job="job", state="gave_up") == 1
