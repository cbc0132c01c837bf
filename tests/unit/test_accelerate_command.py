"""`launcher: accelerate`: the exact `accelerate launch` command of each rung (golden argv),
and the recipe errors of its `accelerate:` section, each naming file, line and key."""
from __future__ import annotations

import os
import sys

import pytest

from guardrun.launcher.command import Resume, build
from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.ladder import decide
from guardrun.launcher.recipe import RecipeError

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from recipes_util import make_recipe  # noqa: E402
from test_golden_recipes import HOME, argv, plan  # noqa: E402

ACCELERATE = """
launcher: accelerate
python: /venv/bin/python
script: train.py
args: {output_dir: out, report_to: none}
gpus: 2
batch: {per_device: 4, grad_accum: 1}
checkpoints: {dir: out}
"""
LAUNCH = ("/venv/bin/python", "-m", "accelerate.commands.launch")


def _argv(tmp_path, body: str, failures=(), **kw) -> list[str]:
    recipe = make_recipe(tmp_path, body)
    plan = decide(recipe, list(failures)).plan
    return list(build(recipe, plan, **kw).argv)


def test_two_processes_on_one_machine(tmp_path):
    assert _argv(tmp_path, ACCELERATE) == [
        *LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
        str(tmp_path / "train.py"), "--output_dir", "out", "--report_to", "none",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1"]


def test_host_oom_rung_sets_num_processes_to_one_and_resumes(tmp_path):
    recipe = make_recipe(tmp_path, ACCELERATE)
    plan = decide(recipe, [Failure(Kind.HOST_OOM)]).plan
    spec = build(recipe, plan, attempt=2, resume=Resume(tmp_path / "out" / "checkpoint-4"))
    # One process: no --multi_gpu (accelerate refuses it below 2 processes).
    assert list(spec.argv) == [
        *LAUNCH, "--num_processes", "1", "--num_machines", "1", "--main_process_port", "0",
        str(tmp_path / "train.py"), "--output_dir", "out", "--report_to", "none",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
        "--resume_from_checkpoint", str(tmp_path / "out" / "checkpoint-4")]
    assert dict(spec.env)["GUARDRUN_ATTEMPT"] == "2"


def test_config_file_decides_the_engine_and_guardrun_only_the_count(tmp_path):
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nnum_processes: 8\nfsdp_config: {}\n")
    body = ACCELERATE + "accelerate: {config_file: fsdp.yaml, flags: [--mixed_precision, bf16]}\n"
    argv = _argv(tmp_path, body, [Failure(Kind.HOST_OOM)])
    # No --multi_gpu: it would override the file's FSDP (accelerate reads the file's
    # distributed_type only when no engine flag is given).
    assert argv[:13] == [*LAUNCH, "--config_file", str(tmp_path / "fsdp.yaml"), "--num_processes", "1",
                         "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "bf16"]


def test_config_file_without_an_engine_still_gets_multi_gpu(tmp_path):
    (tmp_path / "acc.yaml").write_text("mixed_precision: bf16\n")
    argv = _argv(tmp_path, ACCELERATE + "accelerate: {config_file: acc.yaml}\n")
    assert argv[3:8] == ["--config_file", str(tmp_path / "acc.yaml"), "--multi_gpu", "--num_processes", "2"]


def test_an_engine_flag_is_the_engine(tmp_path):
    argv = _argv(tmp_path, ACCELERATE + "accelerate: {flags: [--use_fsdp, --fsdp_version, '2']}\n")
    assert argv[3:12] == ["--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
                          "--use_fsdp", "--fsdp_version", "2"]


def test_two_machines_count_every_process_and_keep_the_given_port(tmp_path):
    body = ACCELERATE + ("accelerate: {num_machines: 2, machine_rank: 1, main_process_ip: 10.0.0.1,"
                         " main_process_port: 29555}\n")
    argv = _argv(tmp_path, body)
    # accelerate's --num_processes is the total over all machines (nproc_per_node = N / machines).
    assert argv[3:15] == ["--multi_gpu", "--num_processes", "4", "--num_machines", "2", "--machine_rank", "1",
                          "--main_process_ip", "10.0.0.1", "--main_process_port", "29555",
                          str(tmp_path / "train.py")]


def test_machines_from_the_config_file_count_too(tmp_path):
    (tmp_path / "multi.yaml").write_text("distributed_type: MULTI_GPU\nnum_machines: 2\nmachine_rank: 0\n"
                                         "main_process_ip: 10.0.0.1\nmain_process_port: 29500\n")
    argv = _argv(tmp_path, ACCELERATE + "accelerate: {config_file: multi.yaml}\n")
    # The file names the port: no --main_process_port 0 over it.
    assert argv[3:10] == ["--config_file", str(tmp_path / "multi.yaml"), "--num_processes", "4",
                          "--num_machines", "2", str(tmp_path / "train.py")]


def test_module_and_gpu_ids(tmp_path):
    body = ACCELERATE.replace("script: train.py", "module: pkg.train").replace("gpus: 2", "gpus: [2, 3, 5]")
    recipe = make_recipe(tmp_path, body)
    spec = build(recipe, decide(recipe, [Failure(Kind.HOST_OOM)]).plan, port=29611)
    # --gpu_ids all: CUDA_VISIBLE_DEVICES (set by guardrun) picks the GPUs; a config file's own
    # gpu_ids list would otherwise override it, and one id with a MULTI_GPU file is an error.
    assert list(spec.argv[3:14]) == ["--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                     "--main_process_port", "29611", "--gpu_ids", "all", "-m", "pkg.train"]
    assert dict(spec.env)["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_rank_logs_go_to_the_attempt_folder(tmp_path):
    recipe = make_recipe(tmp_path, ACCELERATE)
    spec = build(recipe, decide(recipe, []).plan, log_dir=tmp_path / "attempt")
    at = spec.argv.index("--log_dir")
    assert list(spec.argv[at:at + 4]) == ["--log_dir", str(tmp_path / "attempt" / "ranks"), "--tee", "3"]
    assert spec.argv[at + 4] == str(tmp_path / "train.py")
    # One process runs without torch's elastic agent: its error file comes from the environment.
    assert dict(spec.env)["TORCHELASTIC_ERROR_FILE"] == str(tmp_path / "attempt" / "error.json")


@pytest.mark.parametrize("extra, line, key, message", [
    ("accelerate: {config_file: nope.yaml}", 9, "accelerate.config_file", "accelerate config not found"),
    ("accelerate: {num_machines: 0}", 9, "accelerate.num_machines", "expected an integer >= 1"),
    ("accelerate: {num_machines: 2, machine_rank: 2, main_process_ip: h}", 9, "accelerate.machine_rank",
     "machine_rank 2 is not below num_machines 2"),
    ("accelerate: {num_machines: 2}", 9, "accelerate.machine_rank",
     "num_machines 2 needs machine_rank and main_process_ip"),
    ("accelerate: {main_process_port: 70000}", 9, "accelerate.main_process_port", "expected an integer"),
    ("accelerate: {flags: [--num_processes, '3']}", 9, "accelerate.flags[0]", "guardrun sets --num_processes"),
    ("accelerate: {flags: [--cpu]}", 9, "accelerate.flags[0]", "--cpu starts one process"),
    ("accelerate: {flags: [--mixed_precision, bf16, --multi_gpu]}", 9, "accelerate.flags[2]",
     "guardrun sets --multi_gpu"),
    ("accelerate: {flags: [mixed_precision]}", 9, "accelerate.flags[0]", "expected a flag"),
    ("accelerate: {confg_file: a.yaml}", 9, "accelerate.confg_file", "config_file"),
])
def test_accelerate_section_errors(tmp_path, extra, line, key, message):
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, ACCELERATE + extra + "\n")
    assert (err.value.line, err.value.key) == (line, key), str(err.value)
    assert message in err.value.message, str(err.value)


def test_a_config_file_that_is_not_a_mapping(tmp_path):
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, ACCELERATE + "accelerate: {config_file: bad.yaml}\n")
    assert (err.value.line, err.value.key) == (9, "accelerate.config_file")
    assert "bad.yaml" in err.value.message and "mapping" in err.value.message


def test_accelerate_section_needs_the_accelerate_launcher(tmp_path):
    body = ACCELERATE.replace("launcher: accelerate", "launcher: torchrun") + "accelerate: {num_machines: 1}\n"
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, body)
    assert (err.value.line, err.value.key) == (9, "accelerate")
    assert "launcher: accelerate" in err.value.message and "torchrun" in err.value.message


def test_the_ready_recipe_is_llamafactorys_fsdp_command_with_the_counts_explicit():
    """recipes/accelerate_lora.yaml: LLaMA-Factory's examples/extras/fsdp_qlora/train.sh on the
    8 GPUs of its #6486; the config file's own engine (FSDP) stays, so no --multi_gpu."""
    workdir = HOME / "LLaMA-Factory"
    rungs = plan("accelerate_lora.yaml")
    head = [sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(workdir / "examples/accelerate/fsdp_config.yaml")]
    job = [str(workdir / "src/train.py"), "examples/extras/fsdp_qlora/llama3_lora_sft.yaml"]
    assert argv(rungs[0]) == [*head, "--num_processes", "8", "--num_machines", "1",
                              "--main_process_port", "0", *job]
    assert argv(rungs[1]) == [*head, "--num_processes", "6", "--num_machines", "1",
                              "--main_process_port", "0", *job, "gradient_accumulation_steps=11"]
    assert argv(rungs[2])[6] == "4" and argv(rungs[2])[-1] == "gradient_accumulation_steps=16"
    assert "accelerate config not found" in rungs[-1]["all"]
