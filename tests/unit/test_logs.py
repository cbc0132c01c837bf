"""One line of job output -> events (supervisor/diagnose/logs.py).

The table at the top runs whole outputs captured from real runs (tests/data/outputs/real_*,
see the README there for the commands) and a few hand-written ones for what this machine
cannot produce (NCCL, CUBLAS, ECC), through iter_lines + parse_line + first_failure: the
kind the classifier would see and the evidence line the user would be shown.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrun.supervisor.diagnose.lines import iter_lines
from guardrun.supervisor.diagnose.logs import TEXT_CAP, Event, first_failure, parse_line

OUTPUTS = Path(__file__).resolve().parent.parent / "data" / "outputs"


def events_of(name: str) -> list[Event]:
    with open(OUTPUTS / name, "rb") as handle:
        return [event for line in iter_lines(handle) for event in parse_line(line)]


def kinds(events) -> set[str]:
    return {event.kind for event in events}


# file -> (every event kind in it, first_failure's kind, text in its evidence, its rank)
CAPTURED = {
    # real: torchrun --nproc-per-node 2, rank 1 raises torch.OutOfMemoryError
    "real_torchrun_oom.txt": ({"cuda_oom", "traceback", "error"}, "cuda_oom",
                              "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", None),
    "real_torchrun_oom_tee.txt": ({"cuda_oom", "traceback", "error"}, "cuda_oom",
                                  "[default1]:torch.OutOfMemoryError: CUDA out of memory", 1),
    "real_torchrun_hf_cuda_oom.txt": ({"progress", "cuda_oom", "traceback", "error"}, "cuda_oom",
                                      "[rank1]: torch.OutOfMemoryError: CUDA out of memory", 1),
    # real: torchrun, rank 1 SIGKILLs itself: the E line and the ChildFailedError block
    "real_torchrun_sigkill.txt": ({"host_oom", "traceback", "error"}, "host_oom",
                                  "failed (exitcode: -9) local_rank: 1", 1),
    "real_torchrun_dist_modnotfound.txt": ({"user_error", "transient", "traceback", "error"}, "user_error",
                                           "[rank1]: ModuleNotFoundError: No module named", 1),
    "real_torchrun_missing_script.txt": ({"user_error", "traceback", "error"}, "user_error",
                                         "can't open file '/tmp/cap/no_such_train.py': [Errno 2]", None),
    "real_deepspeed_sigkill.txt": ({"host_oom"}, "host_oom", "exits with return code = -9", 1),
    "real_deepspeed_zero3_ok.txt": ({"progress", "loss", "save"}, None, None, None),
    "real_hf_trainer_ok.txt": ({"progress", "loss", "save"}, None, None, None),
    "real_hf_trainer_nan_unfiltered.txt": ({"progress", "loss", "nan"}, "nan",
                                           "{'loss': 'nan', 'grad_norm': 'nan'", None),
    "real_hf_trainer_nan_filtered.txt": ({"progress", "loss", "nan"}, "nan",
                                         "{'loss': '3.64', 'grad_norm': 'nan'", None),
    "real_hf_trainer_bad_flag.txt": ({"user_error", "traceback"}, "user_error",
                                     "ValueError: Some specified arguments are not used by the HfArgumentParser", None),
    "real_hf_trainer_resume_missing.txt": ({"user_error", "traceback"}, "user_error",
                                           "ValueError: Can't find a valid checkpoint at", None),
    "real_python_module_not_found.txt": ({"user_error", "traceback"}, "user_error",
                                         "ModuleNotFoundError: No module named 'flash_attn_nonexistent'", None),
    "real_python_syntax_error.txt": ({"user_error"}, "user_error", "SyntaxError: '[' was never closed", None),
    "real_python_indentation_error.txt": ({"user_error"}, "user_error", "IndentationError: unexpected indent", None),
    "real_python_file_not_found.txt": ({"user_error", "traceback"}, "user_error",
                                       "FileNotFoundError: [Errno 2] No such file or directory", None),
    "real_python_missing_script.txt": ({"user_error"}, "user_error", "can't open file", None),
    "real_argparse_unrecognized.txt": ({"user_error"}, "user_error",
                                       "train.py: error: unrecognized arguments: --lora_r 8", None),
    "real_argparse_required.txt": ({"user_error"}, "user_error",
                                   "error: the following arguments are required: --model_name_or_path", None),
    "real_torch_cpu_alloc_fail.txt": ({"host_oom", "traceback"}, "host_oom",
                                      "DefaultCPUAllocator: can't allocate memory", None),
    # a DataLoader worker SIGKILLed: the ConnectionResetError (transient) comes first, the kill wins
    "real_dataloader_worker_killed.txt": ({"progress", "transient", "host_oom", "traceback"}, "host_oom",
                                          "DataLoader worker (pid 8196) is killed by signal: Killed.", None),
    "real_bash_killed.txt": ({"host_oom"}, "host_oom", "Killed", None),
    # real, on an H100 (torch 2.11.0+cu130, transformers 5.17.0, NCCL 2.28.9)
    "real_gpu_cuda_oom.txt": ({"cuda_oom", "traceback"}, "cuda_oom",
                              "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 400.00 GiB", None),
    # --tee over torch's own tags: '[default1]:[rank1]: '; rank 0's gloo error is the echo
    "real_gpu_torchrun_oom_record_tee.txt": ({"cuda_oom", "transient", "traceback", "error"}, "cuda_oom",
                                             "[default1]:[rank1]: torch.OutOfMemoryError: CUDA out of memory", 1),
    "real_gpu_nccl_duplicate_gpu.txt": ({"user_error", "traceback", "error"}, "user_error",
                                        "ncclInvalidUsage: This usually reflects invalid usage", 0),
    "real_gpu_hf_nan_filtered.txt": ({"progress", "loss", "nan"}, "nan", "{'loss': '0', 'grad_norm': 'nan'", None),
    "real_gpu_hf_nan_unfiltered.txt": ({"progress", "loss", "nan"}, "nan", "{'loss': 'nan', 'grad_norm': 'nan'",
                                       None),
    # real: torchrun --log-dir --redirects 3 --tee 3, an @record entry point raising on rank 1
    "real_torchrun_record_tee.txt": ({"traceback", "error"}, "error", "[default1]:ValueError: boom on rank 1", 1),
    # real, issue 13 (tests/data/outputs/README.md): a plain torchrun script whose rank 0 raised
    # in torch.save; rank 1's gloo "Connection closed by peer" after it is the echo, not the kind
    "real_torchrun_save_error_gloo_echo.txt": ({"progress", "loss", "traceback", "error", "transient"}, "error",
                                               "[rank0]: RuntimeError: Parent directory", 0),
    # the line alone says user_error; its frames (in torch's build machinery) make it transient:
    # tests/unit/test_classify_outputs.py
    "real_torch_file_baton_lock_removed.txt": ({"traceback", "user_error"}, "user_error",
                                               "FileNotFoundError: [Errno 2] No such file or directory", None),
    "real_torch_file_baton_waiter_import.txt": ({"traceback", "user_error"}, "user_error",
                                                "i3_tiny.so: cannot open shared object file", None),
    "real_llamafactory_bad_key.txt": ({"traceback", "user_error"}, "user_error",
                                      "Some keys are not used by the HfArgumentParser: ['lora_rnak']", None),
    "real_llamafactory_bad_key_torchrun.txt": ({"traceback", "user_error", "error"}, "user_error",
                                               "[rank0]: ValueError: Some keys are not used", 0),
    "real_llamafactory_undefined_dataset.txt": ({"traceback", "user_error"}, "user_error",
                                                "ValueError: Undefined dataset no_such_set in dataset_info.json.", None),
    "real_llamafactory_undefined_dataset_torchrun.txt": ({"traceback", "user_error", "error"}, "user_error",
                                                         "[rank1]: ValueError: Undefined dataset no_such_set", 1),
    "real_llamafactory_file_not_found.txt": ({"traceback", "user_error"}, "user_error",
                                             "ValueError: File /tmp/i3-cap/lf/data_missing/tiny_alpaca_v2.json not found.",
                                             None),
    "real_lightning_ok.txt": ({"progress", "loss"}, None, None, None),
    # hand-written
    "hand_bash_interactive_killed.txt": ({"host_oom"}, "host_oom", "Killed", None),
    "hand_nccl_watchdog_timeout.txt": ({"loss", "progress", "transient"}, "transient",
                                       "Watchdog caught collective operation timeout", 3),
    "hand_cublas_alloc_failed.txt": ({"cuda_oom", "traceback"}, "cuda_oom", "CUBLAS_STATUS_ALLOC_FAILED", 0),
    "hand_nccl_cuda_oom.txt": ({"cuda_oom", "traceback", "error"}, "cuda_oom", "NCCL WARN Failed to CUDA calloc",
                               None),
    "hand_std_bad_alloc.txt": ({"host_oom"}, "host_oom", "instance of 'std::bad_alloc'", None),
    "hand_no_kernel_image.txt": ({"user_error", "traceback"}, "user_error", "no kernel image is available", 0),
    "hand_ecc_error.txt": ({"loss", "transient", "traceback"}, "transient", "uncorrectable ECC error", 5),
    "hand_xtuner_mmengine_nan.txt": ({"progress", "loss", "nan"}, "nan", "Iter(train) [  20/5198]", None),
}


def test_every_captured_output_is_in_the_table():
    assert sorted(path.name for path in OUTPUTS.glob("*.txt")) == sorted(CAPTURED)


@pytest.mark.parametrize("name", sorted(CAPTURED))
def test_captured_output(name):
    expected_kinds, failure_kind, evidence, rank = CAPTURED[name]
    events = events_of(name)
    assert kinds(events) == expected_kinds
    found = first_failure(events)
    if failure_kind is None:
        assert found is None
        return
    assert found.kind == failure_kind
    assert evidence in found.text
    assert found.rank == rank


def test_hf_trainer_run_reports_its_steps_losses_and_saves():
    events = events_of("real_hf_trainer_ok.txt")
    progress = [event for event in events if event.kind == "progress"]
    assert progress[-1].step == 12 and progress[-1].total == 12
    assert [event.loss for event in events if event.kind == "loss"] == [4.851, 4.854, 4.857, 4.855, 4.849, 4.855]
    assert [(event.step, event.detail.rsplit("/", 1)[-1]) for event in events if event.kind == "save"] == [
        (6, "checkpoint-6"), (12, "checkpoint-12")]


def test_real_oom_evidence_is_the_exception_line_not_the_raise_in_the_traceback():
    found = first_failure(events_of("real_torchrun_hf_cuda_oom.txt"))
    assert found.detail == "torch.OutOfMemoryError"
    assert "raise" not in found.text


def test_torchrun_block_fields_are_host_oom():
    texts = [event.text for event in events_of("real_torchrun_sigkill.txt") if event.kind == "host_oom"]
    assert any(text.startswith("exitcode  : -9 (pid:") for text in texts)
    assert "traceback : Signal 9 (SIGKILL) received by PID 7541" in texts


# --- single lines -------------------------------------------------------------------------

def only(line: str) -> Event:
    events = parse_line(line)
    assert len(events) == 1, events
    return events[0]


@pytest.mark.parametrize("line,loss", [
    ("{'loss': 5.554, 'grad_norm': 0.14, 'learning_rate': 2e-05, 'epoch': 0.1}", 5.554),
    ("{'loss': '5.554', 'grad_norm': '0.14', 'learning_rate': '2e-05', 'epoch': '0.1'}", 5.554),
    ('{"loss": 1.5e+00, "grad_norm": 0.2}', 1.5),
    ("{'loss': np.float32(0.25), 'grad_norm': np.float32(0.5)}", 0.25),
])
def test_hf_loss_dict(line, loss):
    event = only(line)
    assert (event.kind, event.loss, event.step, event.text) == ("loss", loss, None, line)


def test_hf_loss_dict_with_step_and_rank_tag():
    event = only("[default3]:{'loss': 0.75, 'grad_norm': 1.1, 'learning_rate': 1e-05, 'epoch': 0.5, 'step': 7}")
    assert (event.kind, event.loss, event.step, event.rank) == ("loss", 0.75, 7, 3)


@pytest.mark.parametrize("line,loss,detail", [
    ("{'loss': nan, 'grad_norm': 0.1}", "nan", "loss"),
    ("{'loss': 'nan', 'grad_norm': 'nan'}", "nan", "loss"),
    ("{'loss': 'NaN', 'grad_norm': 0.1}", "nan", "loss"),
    ("{'loss': inf, 'grad_norm': 0.1}", "inf", "loss"),
    ("{'loss': -inf, 'grad_norm': 0.1}", "-inf", "loss"),
    ("{'loss': 0.0, 'grad_norm': nan, 'learning_rate': 2e-05}", "0.0", "grad_norm"),   # logging_nan_inf_filter
    ("{'loss': '0', 'grad_norm': 'inf', 'learning_rate': '2e-05'}", "0.0", "grad_norm"),
    ("[rank0]: {'loss': 2.0, 'grad_norm': '-inf'}", "2.0", "grad_norm"),
])
def test_nan_or_inf_in_loss_or_grad_norm(line, loss, detail):
    event = only(line)
    assert event.kind == "nan" and event.detail == detail
    assert str(event.loss) == loss or (math.isnan(event.loss) and loss == "nan")


@pytest.mark.parametrize("line", [
    "{'train_runtime': '0.122', 'train_samples_per_second': '786.7', 'train_loss': 'nan', 'epoch': '0.1875'}",
    "{'eval_loss': 0.5, 'eval_runtime': 1.2}",
    "{'learning_rate': 2e-05, 'epoch': 0.1}",
    "the loss is {unknown}",
])
def test_dicts_that_are_not_a_training_loss(line):
    assert parse_line(line) == ()


@pytest.mark.parametrize("line,step,total", [
    (" 45%|████▌     | 9/20 [00:04<00:05, 2.1it/s]", 9, 20),
    ("100%|##########| 12/12 [00:00<00:00, 106.88it/s]", 12, 12),
    ("[default0]:  0%|          | 0/1000 [00:00<?, ?it/s]", 0, 1000),
    ("Training:  3%|▎         | 30/1000 [01:00<32:20,  2.00s/it]", 30, 1000),
    ("step 7/30", 7, 30),
    ("Step: 7 / 30", 7, 30),
    ("global_step=7", 7, None),
    ("[INFO] [logging.py:107:log_dist] [Rank 0] step=10, skipped=0, lr=[1e-05], mom=[(0.9, 0.999)]", 10, None),
])
def test_progress(line, step, total):
    event = only(line)
    assert (event.kind, event.step, event.total) == ("progress", step, total)


# A plain script's own print (issue 13 §5): read without a recipe regex. (step, total, loss, epoch)
@pytest.mark.parametrize("line,step,total,loss,epoch", [
    ("step 12 loss 0.53", 12, None, 0.53, None),
    ("Step 12/40", 12, 40, None, None),
    ("Step: 7 / 30  loss 1.2", 7, 30, 1.2, None),
    ("iter 12/40 loss=0.41 lr=1e-4", 12, 40, 0.41, None),
    ("iteration 3, loss: 2.5", 3, None, 2.5, None),
    ("epoch 1 step 12", 12, None, None, 1),
    ("Epoch 1/3, Step 12/40, Loss: 0.53", 12, 40, 0.53, 1),
    ("[rank0]: step 5 loss 0.2180", 5, None, 0.218, None),
    ("2026-12-01 09:00:00,123 INFO step 3 loss 0.2", 3, None, 0.2, None),
    ("step 4 | loss 0.2152 | lr 0.001", 4, None, 0.2152, None),
])
def test_plain_script_progress(line, step, total, loss, epoch):
    events = parse_line(line)
    [progress] = [event for event in events if event.kind == "progress"]
    assert (progress.step, progress.total) == (step, total)
    assert progress.detail == (f"epoch {epoch}" if epoch is not None else "")
    assert [event.loss for event in events if event.kind == "loss"] == ([loss] if loss is not None else [])


def test_plain_script_nan_loss_is_nan():
    [progress, nan] = parse_line("step 9 loss nan")
    assert (progress.step, nan.kind, nan.step, nan.detail) == (9, "nan", 9, "loss")


@pytest.mark.parametrize("line", [
    "saving at step 12",                       # a step named in prose
    "  Total optimization steps = 30",          # HF's banner
    "epoch 2",                                  # an epoch alone is no step
    "stepping into the void 12",
    "iterable dataset: 12/40 shards",
    "Epoch 3: loss unknown",
    "Step 1: loading the data",                 # a banner: no total, loss or epoch with it
])
def test_not_plain_script_progress(line):
    assert [event for event in parse_line(line) if event.kind in ("progress", "loss")] == []


def test_lightning_bar_gives_progress_and_its_train_loss():
    line = "Epoch 1:  50%|█████     | 1/2 [00:00<00:00, 786.48it/s, v_num=0, train_loss=0.934]"
    [progress, loss] = parse_line(line)
    assert (progress.kind, progress.step, progress.total, progress.detail) == ("progress", 1, 2, "Epoch 1")
    assert (loss.kind, loss.loss, loss.step) == ("loss", 0.934, 1)


def test_lightning_real_run_progress():
    """Captured: 10 steps, 8 batches an epoch. The bar counts each epoch's batches (8/8, then
    1/2, 2/2: the last epoch is cut at max_steps), named 'Epoch N'."""
    events = events_of("real_lightning_ok.txt")
    progress = [(event.detail, event.step, event.total) for event in events if event.kind == "progress"]
    assert ("Epoch 0", 8, 8) in progress and progress[-1] == ("Epoch 1", 2, 2)
    losses = [event.loss for event in events if event.kind == "loss"]
    assert losses[0] == 2.05 and losses[-1] == 0.874
    assert first_failure(events) is None


def test_recognisers_stay_cheap():
    """A line costs ~40 µs end to end in the reader (output.py); parse_line's share must stay
    a few µs for the lines that carry nothing and the new plain-script lines alike."""
    lines = ["INFO 2026-12-01 the model has 7 layers and trains on 12 files of data now", "step 12 loss 0.53",
             "{'loss': '5.554', 'grad_norm': '0.14', 'learning_rate': '2e-05', 'epoch': '0.1'}",
             "Epoch 1:  50%|█████     | 1/2 [00:00<00:00, 786.48it/s, v_num=0, train_loss=0.934]"]
    for line in lines:
        took = min(_time_per_call(line) for _ in range(3))
        assert took < 60e-6, (line, took)


def _time_per_call(line: str, calls: int = 2000) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        parse_line(line)
    return (time.perf_counter() - started) / calls


@pytest.mark.parametrize("line", [
    "Loading checkpoint shards: 100%|██████████| 4/4 [02:10<00:00, 32.6s/it]",
    "Map: 100%|██████████| 512/512 [00:00<00:00, 9000.00 examples/s]",
    "Running tokenizer on dataset:  40%|████      | 400/1000 [00:01<00:01, 380.2 examples/s]",
    "Saving the dataset (1/1 shards): 100%|██████████| 10/10 [00:00<00:00, 100 examples/s]",
    "global_step40",
    "we step over 3 items",
])
def test_not_training_progress(line):
    assert parse_line(line) == ()


def test_tqdm_postfix_loss():
    progress, loss = parse_line(" 45%|████▌     | 9/20 [00:04<00:05, 2.1it/s, loss=nan]")
    assert (progress.kind, progress.step) == ("progress", 9)
    assert loss.kind == "nan" and loss.step == 9 and math.isnan(loss.loss)


@pytest.mark.parametrize("line,kind,detail", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB", "cuda_oom", "torch.OutOfMemoryError"),
    ("torch.cuda.OutOfMemoryError: CUDA out of memory.", "cuda_oom", "torch.cuda.OutOfMemoryError"),
    ("RuntimeError: CUDA out of memory. Tried to allocate 1.5 GiB", "cuda_oom", "RuntimeError"),
    ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "cuda_oom",
     "RuntimeError"),
    ("node:1:1 [0] include/alloc.h:103 NCCL WARN Failed to CUDA calloc 6 bytes", "cuda_oom", ""),
    ("NCCL WARN Cuda failure 'out of memory'", "cuda_oom", ""),
    ("Killed", "host_oom", "Killed"),
    ("bash: line 1:  7808 Killed                  python train.py", "host_oom", "Killed"),
    ("  exitcode  : -9 (pid: 123)  (SIGKILL)", "host_oom", "SIGKILL"),
    ("  traceback : Signal 9 (SIGKILL) received by PID 123", "host_oom", "SIGKILL"),
    ("Out of memory: Killed process 4242 (python) total-vm:9000kB", "host_oom", "host memory"),
    ("terminate called after throwing an instance of 'std::bad_alloc'", "host_oom", "host memory"),
    ("RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes", "host_oom",
     "RuntimeError"),
    ("OSError: [Errno 12] Cannot allocate memory", "host_oom", "OSError"),
    ("MemoryError", "host_oom", "MemoryError"),
    ("numpy.core._exceptions._ArrayMemoryError: Unable to allocate 8.00 EiB", "host_oom",
     "numpy.core._exceptions._ArrayMemoryError"),
    ("ModuleNotFoundError: No module named 'flash_attn'", "user_error", "ModuleNotFoundError"),
    ("ImportError: cannot import name 'LlavaLlamaForCausalLM' from 'llava.model'", "user_error", "ImportError"),
    ("SyntaxError: invalid syntax", "user_error", "SyntaxError"),
    ("IndentationError: unexpected indent", "user_error", "IndentationError"),
    ("FileNotFoundError: [Errno 2] No such file or directory: 'data.json'", "user_error", "FileNotFoundError"),
    ("train.py: error: unrecognized arguments: --lora_r 8", "user_error", "argparse"),
    ("torchrun: error: the following arguments are required: training_script", "user_error", "argparse"),
    ("/usr/bin/python3: can't open file '/work/train.py': [Errno 2] No such file or directory", "user_error",
     "missing script"),
    ("RuntimeError: CUDA error: no kernel image is available for execution on the device", "user_error",
     "RuntimeError"),
    ("[rank0]:[E ProcessGroupNCCL.cpp:563] [Rank 0] Watchdog caught collective operation timeout: WorkNCCL(...)",
     "transient", "transient"),
    ("RuntimeError: NCCL communicator was aborted on rank 1. Original reason: Timeout after 1800000 ms", "transient",
     "RuntimeError"),
    ("ConnectionResetError: [Errno 104] Connection reset by peer", "transient", "ConnectionResetError"),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "transient", "RuntimeError"),
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.", "transient", "transient"),
    ("Traceback (most recent call last):", "traceback", ""),
    ("ValueError: too many values to unpack", "error", "ValueError"),
    ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "error",
     "torch.distributed.elastic.multiprocessing.errors.ChildFailedError"),
    ("KeyboardInterrupt", "error", "KeyboardInterrupt"),
    ("AssertionError", "error", "AssertionError"),
])
def test_failure_lines(line, kind, detail):
    event = only(line)
    assert (event.kind, event.detail) == (kind, detail)
    assert event.text == line.strip()


@pytest.mark.parametrize("line,rank", [
    ("[rank3]: torch.OutOfMemoryError: CUDA out of memory.", 3),
    ("[default12]:torch.OutOfMemoryError: CUDA out of memory.", 12),
    ("3: torch.OutOfMemoryError: CUDA out of memory.", 3),
    ("  0%|          | 0/10 [00:00<?, ?it/s][rank1]: ModuleNotFoundError: No module named 'x'", 1),
    ("E1124 api.py:1002] failed (exitcode: -9) local_rank: 5 (pid: 7541) of binary: python", 5),
])
def test_rank_tags(line, rank):
    failure = first_failure(parse_line(line))
    assert failure is not None and failure.rank == rank


@pytest.mark.parametrize("line", [
    "    raise torch.OutOfMemoryError(OOM_MESSAGE)",   # a traceback's source line
    "  exitcode  : -15 (pid: 7533)  (SIGTERM)",
    "  exitcode  : 1 (pid: 7534) ",
    "Using the latest cached version of the module, error handling improved",
    "Epoch 1: no Error here, an ErrorHandler class",
    "Xidian University dataset loaded",
    "[hf_lora_train] world_size=1 per_device=8 grad_accum=1 global_batch=8 lr=5e-05",
])
def test_lines_that_are_no_evidence(line):
    assert [event for event in parse_line(line) if event.kind not in ("progress", "loss")] == []


@pytest.mark.parametrize("line,step,path", [
    ("[transformers] Saving model checkpoint to /out/checkpoint-40", 40, "/out/checkpoint-40"),
    (" 50%|█████     | 6/12 [00:00<00:00, 100.57it/s]"
     "[transformers] Saving model checkpoint to /o/checkpoint-6", 6, "/o/checkpoint-6"),
    ("[INFO] [engine.py:3536:_save_zero_checkpoint] Saving model checkpoint: /o/checkpoint-8/global_step8/"
     "zero_pp_rank_0_mp_rank_00_model_states.pt", 8, None),
    ("Saving model checkpoint to /out/final", None, "/out/final"),
])
def test_save_markers(line, step, path):
    [save] = [event for event in parse_line(line) if event.kind == "save"]
    assert save.step == step
    assert path is None or save.detail == path


# --- hostile lines ------------------------------------------------------------------------

def test_ansi_coloured_lines_are_read_and_the_evidence_is_clean():
    event = only("\x1b[1;31mtorch.OutOfMemoryError\x1b[0m: CUDA out of memory.\x1b[K")
    assert (event.kind, event.text) == ("cuda_oom", "torch.OutOfMemoryError: CUDA out of memory.")


def test_nul_bytes_do_not_break_matching_and_leave_the_evidence():
    event = only("ModuleNotFoundError: No module named 'x'\x00\x00")
    assert (event.kind, event.text) == ("user_error", "ModuleNotFoundError: No module named 'x'")


def test_a_loss_value_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    line = f"{{'loss': __import__('os').system('touch {marker}'), 'grad_norm': 0.1}}"
    assert parse_line(line) == ()
    assert parse_line("{'loss': __import__('os')}") == ()
    assert not marker.exists()


HOSTILE = [
    "{" * 10_000,
    "{'loss': 1.0, " + ", ".join(f"'k{i}': {i}" for i in range(10_000))[:64 * 1024],   # never closed
    "{'loss': " + "9" * 60_000 + "}",
    "1%|" * 20_000,
    "NCCL " * 12_000,
    "a" * 64 * 1024 + "Error",
    "x:" + " " * 60_000 + "error: argument",
    "Traceback" + "(" * 60_000,
    "[rank1]:" * 8_000,
]


@pytest.mark.parametrize("index", range(len(HOSTILE)))
def test_hostile_lines_are_bounded_and_cheap(index):
    line = HOSTILE[index]
    started = time.perf_counter()
    events = parse_line(line)
    elapsed = time.perf_counter() - started
    assert all(len(event.text) <= TEXT_CAP + 2 for event in events)
    assert elapsed < 0.5, f"{elapsed:.3f} s: a pattern backtracks"   # linear patterns take ~1 ms


def test_a_million_key_dict_cut_by_iter_lines_gives_no_loss():
    line = "{'loss': 1.0, " + ", ".join(f"'k{i}': {i}" for i in range(100_000))
    assert [event for event in parse_line(line[:64 * 1024] + " …[cut]") if event.kind == "loss"] == []


def test_long_evidence_is_capped_and_keeps_the_match():
    event = only("x" * 2000 + " torch.OutOfMemoryError: CUDA out of memory." + "y" * 2000)
    assert event.kind == "cuda_oom"
    assert len(event.text) <= TEXT_CAP + 2
    assert "CUDA out of memory" in event.text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_gives_events_never_an_exception(line):
    for event in parse_line(line):
        assert isinstance(event, Event) and len(event.text) <= TEXT_CAP + 2


# --- first_failure ------------------------------------------------------------------------

def ev(kind: str, text: str = "") -> Event:
    return Event(kind, text or kind)


@pytest.mark.parametrize("sequence,chosen", [
    (["traceback", "error", "cuda_oom"], "cuda_oom"),
    (["transient", "host_oom"], "host_oom"),          # an NCCL timeout echoing a killed rank
    (["error", "transient"], "transient"),
    (["traceback", "nan", "error"], "nan"),
    (["nan", "user_error"], "user_error"),
    (["traceback", "error"], "error"),
    (["traceback"], "traceback"),
    (["progress", "loss", "save"], None),
    ([], None),
])
def test_first_failure_prefers_the_most_specific(sequence, chosen):
    found = first_failure([ev(kind) for kind in sequence])
    assert (found.kind if found else None) == chosen


def test_first_failure_takes_the_earliest_of_equals():
    events = [ev("error", "first"), ev("cuda_oom", "rank 1 oom"), ev("host_oom", "later sigkill"),
              ev("cuda_oom", "rank 0 oom")]
    assert first_failure(events).text == "rank 1 oom"


def test_a_recipes_own_regexes_win_over_the_built_in_recognisers(tmp_path):
    """A script printing its own counter and an inner 'step 3 loss 0.1' of something else: with
    `progress: {step_regex, loss_regex}` the reader follows the recipe's, whatever the order."""
    import io

    from guardrun.launcher.spec import ProgressPatterns
    from guardrun.supervisor.record.console import Console
    from guardrun.supervisor.diagnose.output import OutputReader
    from guardrun.supervisor.diagnose.patterns import Patterns

    patterns = Patterns.from_recipe(ProgressPatterns(r"global it (\d+)/(\d+)", r"L=(\S+)"), None)
    data = b"global it 120/500 L=0.7\nstep 3 loss 0.1\n"
    reader = OutputReader(io.BytesIO(data), tmp_path / "output.log", Console(io.StringIO(), quiet=True), "",
                          patterns=patterns).start()
    assert reader.join(5)
    progress = reader.progress()
    assert (progress.step, progress.total, progress.loss) == (120, 500, 0.7)
    # without the recipe's regexes the plain line is read
    assert [e.step for e in Patterns().events("step 3 loss 0.1") if e.kind == "progress"] == [3]


def test_the_gloo_echo_printed_before_the_cause_is_still_the_echo():
    """Each rank's stream is buffered on its own: rank 1's echo may reach the pipe first.
    The real capture with rank 1's block moved before rank 0's."""
    with open(OUTPUTS / "real_torchrun_save_error_gloo_echo.txt", "rb") as handle:
        lines = list(iter_lines(handle))
    rank0 = [line for line in lines if line.startswith("[rank0]:")]
    rank1 = [line for line in lines if line.startswith("[rank1]:")]
    rest = [line for line in lines if not line.startswith(("[rank0]:", "[rank1]:"))]
    events = [event for line in rank1 + rank0 + rest for event in parse_line(line)]
    found = first_failure(events)
    assert (found.kind, found.rank) == ("error", 0)
    assert "Parent directory" in found.text
    # alone (the other rank's error lost), the echo is what there is
    assert first_failure([e for line in rank1 for e in parse_line(line)]).kind == "transient"
