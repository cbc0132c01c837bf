"""The root cause of a failed attempt (supervisor/diagnose/rootcause.py), from real captured outputs
(tests/data/outputs/) and real torchelastic error files (tests/data/errorfiles/)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrun.launcher.failures import Failure, Kind
from guardrun.supervisor.run.diagnosis import root_cause
from guardrun.supervisor.run.extlocks import Build
from guardrun.supervisor.diagnose.lines import iter_lines, strip_ansi
from guardrun.supervisor.diagnose.logs import first_failure, parse_line
from guardrun.supervisor.run.policy import AttemptEnd
from guardrun.supervisor.diagnose.rootcause import (MAX_FRAMES, RootCause, Trace, TraceTracker, judged, pick_root_cause,
                                           read_error_files, settle)

DATA = Path(__file__).resolve().parent.parent / "data"


def cause_of(name: str) -> RootCause | None:
    """What the attempt would show for this output: the tracker fed as OutputReader feeds it."""
    tracker, events = TraceTracker(), []
    with open(DATA / "outputs" / name, "rb") as handle:
        for raw in iter_lines(handle):
            line = strip_ansi(raw)
            found = parse_line(line)
            events += found
            tracker.feed(line, found)
    evidence = first_failure(events)
    return pick_root_cause([], tracker.traces(), evidence.text if evidence else "")


# file -> (event kind, rank, exception, message start, innermost frame's text)
ROOT_CAUSES = {
    "real_gpu_torchrun_oom_record_tee.txt": ("cuda_oom", 1, "torch.OutOfMemoryError",
                                             "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 400.00 GiB",
                                             'File "/tmp/cap/oom_ranks.py", line 7, in grow\n'
                                             '  return torch.empty(400 * 2**30, dtype=torch.uint8, device="cuda")'),
    "real_gpu_cuda_oom.txt": ("cuda_oom", None, "torch.OutOfMemoryError", "torch.OutOfMemoryError: CUDA out of memory",
                              'File "/tmp/cap/oom_one.py", line 4, in allocate'),
    "real_gpu_nccl_duplicate_gpu.txt": ("user_error", 0, "", "ncclInvalidUsage: This usually reflects invalid usage",
                                        "line 3068, in all_reduce"),
    "real_torchrun_hf_cuda_oom.txt": ("cuda_oom", 1, "torch.OutOfMemoryError", "torch.OutOfMemoryError: CUDA out",
                                      "hf_lora_train.py\", line 145, in compute_loss"),
    "real_torchrun_dist_modnotfound.txt": ("user_error", 1, "ModuleNotFoundError",
                                           "ModuleNotFoundError: No module named 'missing_plugin_module_xyz'",
                                           'File "/tmp/cap/dist_err.py", line 8, in <module>'),
    "real_torchrun_record_tee.txt": ("error", 1, "ValueError", "ValueError: boom on rank 1",
                                     'File "/tmp/tr/rec.py", line 9, in main\n  raise ValueError("boom on rank 1")'),
    "real_python_syntax_error.txt": ("user_error", None, "SyntaxError", "SyntaxError: '[' was never closed",
                                     'File "/tmp/cap/train_syntax.py", line 2'),
    "real_hf_trainer_bad_flag.txt": ("user_error", None, "ValueError", "ValueError: Some specified arguments",
                                     "in parse_args_into_dataclasses"),
    "real_torchrun_sigkill.txt": ("host_oom", 1, "", "E1124 23:07:15.885000 7535", None),
    "real_argparse_unrecognized.txt": ("user_error", None, "", "train.py: error: unrecognized arguments: --lora_r 8",
                                       None),
    "hand_nccl_watchdog_timeout.txt": ("transient", 3, "", "[E1124 10:42:17.553170416 ProcessGroupNCCL.cpp:632]",
                                       None),
    "real_gpu_hf_nan_filtered.txt": ("nan", None, "", "{'loss': '0', 'grad_norm': 'nan'", None),
    # rank 0's torch.save error, not rank 1's gloo echo that followed it (issue 13 §3)
    "real_torchrun_save_error_gloo_echo.txt": ("error", 0, "RuntimeError",
                                               "RuntimeError: Parent directory /tmp/i3-cap/no_such_dir does not exist.",
                                               'torch/serialization.py", line 828, in __init__'),
    "real_llamafactory_undefined_dataset_torchrun.txt": ("user_error", 1, "ValueError",
                                                         "ValueError: Undefined dataset no_such_set",
                                                         'llamafactory/data/parser.py", line 126, in get_dataset_list'),
}


@pytest.mark.parametrize("name", sorted(ROOT_CAUSES))
def test_root_cause_of_captured_output(name):
    kind, rank, exception, message, frame = ROOT_CAUSES[name]
    cause = cause_of(name)
    assert (cause.kind, cause.rank, cause.exception) == (kind, rank, exception)
    assert cause.message.startswith(message), cause.message
    assert len(cause.frames) <= MAX_FRAMES
    if frame is None:
        assert cause.frames == ()
    else:
        assert frame in cause.frames[-1]


def test_outputs_without_a_failure_have_no_cause():
    assert cause_of("real_hf_trainer_ok.txt") is None
    assert cause_of("real_deepspeed_zero3_ok.txt") is None


def test_interleaved_ranks_keep_their_own_frames():
    """Rank 0's barrier frames never leak into rank 1's OOM traceback."""
    cause = cause_of("real_gpu_torchrun_oom_record_tee.txt")
    assert not any("barrier" in frame for frame in cause.frames)
    assert any("grow(1)" in frame for frame in cause.frames)


# --- error files ----------------------------------------------------------------------------

def place(tmp_path: Path, name: str, rank: int, timestamp: str | None = None) -> Path:
    """A real error file put where torchrun puts it: ranks/<run>/attempt_0/<rank>/error.json."""
    folder = tmp_path / "ranks" / "run_x" / "attempt_0" / str(rank)
    folder.mkdir(parents=True)
    data = json.loads((DATA / "errorfiles" / name).read_text())
    if timestamp is not None:
        data["message"]["extraInfo"]["timestamp"] = timestamp
    (folder / "error.json").write_text(json.dumps(data))
    return folder / "error.json"


def test_a_real_error_file_is_read_with_rank_frames_and_time(tmp_path):
    path = place(tmp_path, "cpu_rank1_valueerror.json", 1)
    [cause] = read_error_files(tmp_path)
    assert (cause.rank, cause.exception, cause.message) == (1, "ValueError", "ValueError: boom on rank 1")
    assert cause.timestamp == 1795603871.0 and cause.source == f"error file {path}"
    assert cause.frames[-1] == 'File "/tmp/tr/rec.py", line 9, in main\n  raise ValueError("boom on rank 1")'


def test_the_earliest_error_file_wins(tmp_path):
    place(tmp_path, "gpu_rank0_gloo_closed.json", 0, timestamp="1795603999")
    place(tmp_path, "cpu_rank1_valueerror.json", 1, timestamp="1795603990")
    assert pick_root_cause(read_error_files(tmp_path), []).rank == 1


def test_same_second_error_files_prefer_the_telling_one_over_the_echo(tmp_path):
    """Rank 0's 'Connection closed by peer' (transient) and rank 1's error in the same second."""
    place(tmp_path, "gpu_rank0_gloo_closed.json", 0, timestamp="1795603871")
    place(tmp_path, "cpu_rank1_valueerror.json", 1, timestamp="1795603871")
    cause = pick_root_cause(read_error_files(tmp_path), [])
    assert (cause.rank, cause.exception) == (1, "ValueError")


def test_broken_error_files_are_skipped(tmp_path):
    (tmp_path / "error.json").write_text('{"message": {"message": "ValueError: x", "extraInfo": {"py_call')
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "error.json").write_text('{"message": 42}')
    assert read_error_files(tmp_path) == []


def test_error_files_beat_the_output(tmp_path):
    place(tmp_path, "cpu_rank1_valueerror.json", 1)
    tracker = TraceTracker()
    for line in ("Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                 "KeyError: 'a'"):
        tracker.feed(line, parse_line(line))
    assert pick_root_cause(read_error_files(tmp_path), tracker.traces()).exception == "ValueError"


# --- the record -----------------------------------------------------------------------------

def test_the_summary_fits_one_screen_and_round_trips_through_json():
    cause = cause_of("real_torchrun_hf_cuda_oom.txt")
    cause = settle(cause, "cuda_oom", "", decided_by_guardrun=False)
    lines = cause.lines()
    assert lines[0] == "root cause: cuda_oom on rank 1 (from output)"
    assert lines[1].startswith("  torch.OutOfMemoryError: CUDA out of memory.")
    assert len(lines) <= 3 + 2 * MAX_FRAMES and all(len(line) < 400 for line in lines)
    assert RootCause.from_dict(json.loads(json.dumps(cause.as_dict()))) == cause


def test_guardrun_evidence_when_guardrun_stopped_the_job():
    cause = cause_of("real_torchrun_dist_modnotfound.txt")
    mine = settle(cause, "host_oom", "job memory 10.0 GiB (PSS) reached the limit 10.0 GiB", decided_by_guardrun=True)
    assert (mine.source, mine.message, mine.frames) == ("guardrun", "job memory 10.0 GiB (PSS) reached the limit 10.0 GiB", ())
    nan = settle(cause_of("real_gpu_hf_nan_filtered.txt"), "nan_loss", "x", decided_by_guardrun=True)
    assert (nan.kind, nan.source) == ("nan_loss", "output")


def test_a_flood_of_tracebacks_keeps_the_first_and_bounded_frames():
    tracker = TraceTracker()
    for index in range(5000):
        for line in (f"[rank{index % 8}]: Traceback (most recent call last):",
                     *(f'[rank{index % 8}]:   File "f{n}.py", line {n}, in g' for n in range(50)),
                     f"[rank{index % 8}]: RuntimeError: number {index}"):
            tracker.feed(line, parse_line(line))
    traces = tracker.traces()
    assert len(traces) <= 64
    assert traces[0].event.text.endswith("number 0")
    assert all(len(t.frames) <= MAX_FRAMES for t in traces)


# -- a limit crossed while the tree compiled a torch extension (issue 12 §7) ------------------

@pytest.mark.parametrize("kind, program, expect_compile", [
    ("host_oom", "cc1plus", True),
    ("host_oom", "ninja", True),
    ("host_oom", "python3.11", False),  # working in the folder is not compiling: the usual cause
    ("cuda_oom", "cc1plus", False),     # a compiler takes no VRAM
])
def test_a_host_limit_crossed_while_compiling_names_the_extension(tmp_path, kind, program, expect_compile):
    evidence = "job memory 3.1 GiB (PSS) reached the limit 2 GiB"
    failure = Failure(Kind(kind), evidence, attempt=1)
    end = AttemptEnd(exit_code=-15, stopped_for=failure, attempt=1,
                     building=(Build(("py311_cpu", "deepspeed_shm_comm"), 42, program),))
    cause = root_cause(end, failure, tmp_path)
    assert (cause.kind, cause.source) == (kind, "guardrun")
    hint = "compiling torch extension deepspeed_shm_comm: pre-build it or raise the limit"
    assert cause.message == (f"{hint} ({evidence})" if expect_compile else evidence)


# -- whose fault: judged from the frames (issue 13 §3) -------------------------------------

LIB = "/venv/lib/python3.11/site-packages"


def judged_kind(line: str, *frames: str) -> str:
    [event] = [e for e in parse_line(line) if e.kind not in ("progress", "loss")]
    [out] = judged([event], [Trace(event, tuple(f'File "{f}", line 1, in f' for f in frames))])
    return out.kind


@pytest.mark.parametrize("line,frames,kind", [
    # torch's build machinery and its caches: not the user's
    ("FileNotFoundError: [Errno 2] No such file or directory: '/x/lock'",
     ("/work/train.py", f"{LIB}/torch/utils/cpp_extension.py", f"{LIB}/torch/utils/file_baton.py"), "transient"),
    ("ImportError: /root/.cache/torch_extensions/py311_cpu/shm/shm.so: cannot open shared object file", (),
     "transient"),
    ("ImportError: x.so: undefined symbol", (f"{LIB}/torch/utils/cpp_extension.py", "<frozen importlib._bootstrap>"),
     "transient"),
    # the user's files and modules
    ("FileNotFoundError: [Errno 2] No such file or directory: '/data/train.json'", ("/work/train.py",), "user_error"),
    ("ModuleNotFoundError: No module named 'flash_attn'", ("/work/train.py",), "user_error"),
    ("FileNotFoundError: [Errno 2] No such file or directory: '/data/x.json'", (f"{LIB}/datasets/load.py",),
     "user_error"),
    # a plain exception raised by the user's own code is theirs; by a library's, unknown
    ("KeyError: 'labels'", ("/work/train.py",), "user_error"),
    ("ValueError: bad shape", ("/work/train.py", f"{LIB}/torch/nn/functional.py"), "error"),
    ("RuntimeError: boom", ("/work/train.py",), "error"),
    ("ValueError: no frames", (), "error"),
])
def test_whose_fault(line, frames, kind):
    assert judged_kind(line, *frames) == kind
