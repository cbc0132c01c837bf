"""The status line fitted to a width: shortened, then fields dropped least important first,
cropped only as a last resort; 8 GPUs summarised."""
from types import SimpleNamespace

import pytest

from guardrun.supervisor.record.statusline import DROP_ORDER, Field, StatusLine, fit, gpu_summary

GIB = 1 << 30
EIGHT = [SimpleNamespace(used=int(used * GIB), total=80 * GIB) for used in (61, 62, 70, 71, 75, 77, 78, 79.2)]


def line(gpus=EIGHT):
    per_gpu = " · ".join(f"gpu{i} {r.used / GIB:.1f}/80 GiB" for i, r in enumerate(gpus))
    return StatusLine([
        Field("attempt", "attempt 2"), Field("rung", "rung 1"), Field("ranks", "8 rank(s)"),
        Field("mem", "mem 41.2 GiB/120 GiB"), Field("avail", "avail 300 GiB"),
        Field("gpu", per_gpu, short=gpu_summary(gpus)), Field("step", "step 1200/5000"),
        Field("loss", "loss 0.8123"), Field("ckpt", "ckpt 1000 (3m ago)"), Field("elapsed", "1h02m"),
    ])


def test_the_whole_line_when_it_fits():
    full = line()
    assert len(full) > 200  # the 8-GPU line of the issue: 287 characters there
    assert fit(full, 400) == str(full)


def test_gpus_are_summarised_before_any_field_is_dropped():
    fitted = fit(line(), 200)
    assert fitted == ("attempt 2 · rung 1 · 8 rank(s) · mem 41.2 GiB/120 GiB · avail 300 GiB · "
                      "gpu 8× 61–79/80 GiB · step 1200/5000 · loss 0.8123 · ckpt 1000 (3m ago) · 1h02m")


def test_eighty_columns_drop_the_least_important_first():
    fitted = fit(line(), 79)
    assert fitted == "attempt 2 · mem 41.2 GiB/120 GiB · gpu 8× 61–79/80 GiB · step 1200/5000"
    assert len(fitted) <= 79


@pytest.mark.parametrize("width", range(0, 300, 7))
def test_never_wider_than_the_width(width):
    assert len(fit(line(), width)) <= width


def test_a_field_leaves_only_after_those_before_it_in_the_order():
    full = line()
    for width in range(10, len(full)):
        kept = {f.name for f in full.fields if f.text in fit(full, width) or (f.short and f.short in fit(full, width))}
        gone = [name for name in DROP_ORDER if name not in kept]
        assert gone == list(DROP_ORDER[:len(gone)]), (width, gone)


def test_crops_with_an_ellipsis_as_the_last_resort():
    assert fit(line(), 5) == "atte…"
    assert fit("waiting for 2 free GPU(s), 58s left: gpu0 busy", 20) == "waiting for 2 free …"


def test_the_text_of_a_status_line_is_all_of_it():
    """Logs, journald and systemd's STATUS= get the whole line, as before."""
    one = StatusLine([Field("attempt", "attempt 1"), Field("gpu", ""), Field("step", "step 3")])
    assert one == "attempt 1 · step 3" and [f.name for f in one.fields] == ["attempt", "step"]


def test_gpu_summary():
    assert gpu_summary(EIGHT) == "gpu 8× 61–79/80 GiB"
    assert gpu_summary(EIGHT[:1]) == ""
    same = [SimpleNamespace(used=30 * GIB, total=80 * GIB)] * 2
    assert gpu_summary(same) == "gpu 2× 30/80 GiB"


# -- through the loop: the line a real Supervisor draws on an 80-column terminal --------

def test_the_loop_draws_eight_gpus_summarised_at_80_columns(tmp_path, state_dir, monkeypatch):
    import io

    from fakes import FakeGpuSource
    from recipes_util import make_recipe

    from guardrun.supervisor.core.clock import MonotonicClock
    from guardrun.supervisor.record.console import Console
    from guardrun.supervisor.record.journal import Journal
    from guardrun.supervisor.run.loop import Supervisor
    from guardrun.supervisor.watch import proc

    monkeypatch.setattr(proc, "set_child_subreaper", lambda: None)  # pytest must not adopt
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    began = tmp_path / "began"  # from the job's start on, its 8 GPUs hold 61-79 GiB
    (tmp_path / "job.py").write_text(f"import time\nopen({str(began)!r}, 'w').close()\n"
                                     "print('step 1/2 loss 0.5', flush=True)\ntime.sleep(0.5)\n")
    recipe = make_recipe(tmp_path, """
        launcher: python
        script: job.py
        gpus: 8
        monitor: {interval: 0.05}
        """, script="unused.py")
    source = FakeGpuSource(count=8, used=lambda index: int(EIGHT[index].used) if began.exists() else 0)
    journal = Journal(recipe.name)
    out = io.StringIO()
    code = Supervisor(recipe, journal, Console(out, tty=True), MonotonicClock(), gpus=source).run()
    journal.close()
    assert code == 0, out.getvalue()
    drawn = [piece.split("\r")[0] for piece in out.getvalue().split("\r\x1b[J") if piece.startswith("attempt 1")]
    assert drawn and all(len(line) <= 79 for line in drawn), drawn
    assert any("gpu 8× 61–79/80 GiB · step 1/2" in line for line in drawn), drawn
