"""`guardrun plan`: the table of rungs, one rung in full, and the command line's errors."""
from __future__ import annotations

import json
import textwrap

from click.testing import CliRunner

from guardrun.supervisor.cli.main import main

RECIPE = """\
launcher: deepspeed
python: /venv/bin/python
script: train.py
args: {output_dir: out, bf16: true}
gpus: 4
batch: {per_device: 8, grad_accum: 1}
lr: {value: 1.0e-4}
deepspeed: {config: ds.json}
model: {params: 7e9, trainable: lora, lora_rank: 64, seq_len: 1024, gradient_checkpointing: true}
ladder:
  - {on: [cuda_oom], batch: halve}
  - {on: [cuda_oom], zero3_offload: true}
"""


def write(tmp_path, body=RECIPE, stage=2):
    (tmp_path / "train.py").write_text("")
    (tmp_path / "ds.json").write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto",
                                                  "zero_optimization": {"stage": stage}}))
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(body))
    return str(path)


def plan(*args):
    return CliRunner().invoke(main, ["plan", *args])


def test_table_then_the_first_rung_that_fits(tmp_path):
    result = plan(write(tmp_path), "--gpu-free", "20GiB", "--host-available", "256GiB")
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("rung  on"))
    assert out[header].split() == ["rung", "on", "ranks", "micro", "accum", "global", "lr", "zero",
                                   "offload", "GPU/rank", "host", "fits", "changes", "(against", "the",
                                   "rung", "before)"]
    column = out[header].index("changes")
    rows = [line[:column].split() for line in out[header + 1:header + 4]]
    assert [row[:9] for row in rows] == [
        ["0", "-", "4", "8", "1", "32", "0.0001", "2", "none"],
        ["1", "cuda_oom", "4", "4", "2", "32", "0.0001", "2", "none"],
        ["2", "cuda_oom", "4", "4", "2", "32", "0.0001", "3", "all"]]
    assert [row[-1] for row in rows] == ["(GPU)", "yes", "yes"] and rows[0][-2] == "NO"
    assert any(line.startswith("rung 0 does not fit: predicted ") and "per GPU > 18.0 GiB usable of "
               "20.0 GiB free on GPU 0" in line for line in out)
    assert "== rung 1 (the first that fits): on cuda_oom" in out
    command = next(line for line in out if line.startswith("   command: "))
    assert command.endswith("--per_device_train_batch_size 4 --gradient_accumulation_steps 2 "
                            f"--learning_rate 0.0001 --deepspeed {tmp_path}/ds.json")
    assert f"   DeepSpeed config: {tmp_path}/ds.json (unchanged by this rung)" in out
    assert "model: 7.00B parameters, trains 0.17B (lora r64 all-linear), bf16, 1024 tokens per sample" in out


def test_rung_option_shows_the_derived_deepspeed_config(tmp_path):
    result = plan(write(tmp_path), "--rung", "2", "--gpu-free", "80GiB")
    assert result.exit_code == 0, result.output
    assert "== rung 2: on cuda_oom" in result.output
    assert "   file <attempt dir>/deepspeed.json:" in result.output
    assert '"device": "cpu"' in result.output
    assert "--deepspeed '<attempt dir>/deepspeed.json'" in result.output


def test_without_a_model_nothing_is_estimated(tmp_path):
    body = RECIPE.replace("model: {params: 7e9, trainable: lora, lora_rank: 64, seq_len: 1024, "
                          "gradient_checkpointing: true}\n", "")
    result = plan(write(tmp_path, body))
    assert result.exit_code == 0
    assert "memory: no `model:` in the recipe: memory not estimated" in result.output
    assert "== rung 0: the recipe as written" in result.output


def test_errors_name_the_problem_and_exit_2(tmp_path):
    path = write(tmp_path)
    bad_rung = plan(path, "--rung", "9")
    assert (bad_rung.exit_code, bad_rung.output.strip()) == (
        2, "guardrun: error: --rung 9: the recipe has rungs 0 to 2")
    bad_size = plan(path, "--gpu-free", "24G")
    assert bad_size.exit_code == 2 and "'24G' is ambiguous: write 24GiB" in bad_size.output
    (tmp_path / "broken.yaml").write_text("launcher: torchrun\nscript: train.py\ngpus: 0\n")
    broken = plan(str(tmp_path / "broken.yaml"))
    assert broken.exit_code == 2
    assert broken.output.strip().endswith("broken.yaml:3: gpus: expected a GPU count >= 1, a list of GPU ids "
                                          "like [0, 1], or all, got 0")
    assert "Traceback" not in broken.output


def test_a_missing_script_is_a_warning_for_plan_only(tmp_path):
    path = write(tmp_path, RECIPE.replace("script: train.py", "script: gone.py"))
    result = plan(path)
    assert result.exit_code == 0
    assert f"warning: {path}:3: script: script not found: {tmp_path}/gone.py" in result.output
    assert CliRunner().invoke(main, ["run", path]).exit_code == 2  # run refuses it


def _changes(output: str) -> dict[int, str]:
    """{rung: its `changes` cell} from the table."""
    out = output.splitlines()
    header = next(i for i, line in enumerate(out) if line.startswith("rung  on"))
    column = out[header].index("changes")
    rows = {}
    for line in out[header + 1:]:
        if not line[:1].isdigit():
            break
        rows[int(line.split()[0])] = line[column:]
    return rows


def test_table_shows_each_rungs_exact_changes(tmp_path):
    result = plan(write(tmp_path), "--gpu-free", "80GiB")
    assert result.exit_code == 0, result.output
    rows = _changes(result.output)
    assert rows[0] == "-"
    assert rows[1] == "--per_device_train_batch_size 8→4, --gradient_accumulation_steps 1→2"
    assert rows[2].startswith(f"--deepspeed {tmp_path}/ds.json→<attempt dir>/deepspeed.json, ")
    assert 'deepspeed +zero_optimization.offload_param.device="cpu"' in rows[2]
    assert "deepspeed zero_optimization.stage 2→3" in rows[2]


def test_rungs_that_change_nothing_are_marked_skipped_with_why(tmp_path):
    """HF script (it takes --per_device_train_batch_size), no `ladder:`: the loader rung sets
    what TrainingArguments already defaults to; a tool told no rank count ignores gpus rungs."""
    body = ("launcher: python\nscript: train.py\nargs: {output_dir: out}\n"
            "batch: {per_device: 1, grad_accum: 1}\n")
    result = plan(write(tmp_path, body))
    assert result.exit_code == 0, result.output
    assert ("trainer: HF TrainingArguments script (the recipe passes --per_device_train_batch_size, an HF "
            "TrainingArguments flag)") in result.output
    rows = _changes(result.output)
    assert rows == {0: "-", 1: "none: skipped", 2: "none: skipped", 3: "+--gradient_checkpointing True",
                    4: "none: skipped"}
    assert ("rung 1 (dataloader_workers 0) launches what the recipe as written launches "
            "(dataloader_num_workers is already 0: TrainingArguments' default); `guardrun run` skips it"
            ) in result.output
    assert ("rung 2 (batch halve) launches what the recipe as written launches (the micro-batch is "
            "already 1); `guardrun run` skips it") in result.output
    command = ("launcher: command\ncommand: [mytool, train]\ngpus: 2\n")
    tool = plan(write(tmp_path, command))
    assert _changes(tool.output) == {0: "-", 1: "none: skipped"}
    assert ("rung 1 (gpus 1) launches what the recipe as written launches (`launcher: command` without "
            "`ranks_env` tells the tool no rank count)") in tool.output
    assert "note: `launcher: command` without `ranks_env`: a gpus rung tells the tool no rank count" in tool.output


def test_a_plain_script_is_planned_without_hf_flags(tmp_path):
    body = ("launcher: torchrun\nscript: train.py\nargs: {steps: 10}\ngpus: 2\n"
            "batch: {per_device: 4, per_device_arg: --batch_size, grad_accum_arg: --accum}\n")
    result = plan(write(tmp_path, body), "--all")
    assert result.exit_code == 0, result.output
    assert ("trainer: plain script: rungs pass no HF TrainingArguments flag (nothing in the recipe names "
            "one; declare `trainer: hf` if the script is one)") in result.output
    assert _changes(result.output) == {0: "-", 1: "--nproc-per-node 2→1, --accum 1→2",
                                       2: "--batch_size 4→2, --accum 2→4", 3: "--batch_size 2→1, --accum 4→8"}
    assert "dataloader_num_workers" not in result.output and "--gradient_checkpointing" not in result.output
