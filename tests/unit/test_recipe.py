"""Recipes: a good one read field by field, and bad ones, each naming its file, line and key."""
from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest

from guardrun.launcher.failures import Kind
from guardrun.launcher.recipe import RecipeError, load_recipe
from guardrun.launcher.spec import (Batch, Checkpoints, DeepSpeedCfg, LearningRate, Limits, Monitor,
                                    ProgressPatterns, Recipe, Restarts, Rung, SuccessEvidence)
from guardrun.launcher.rungs import RUNG
from guardrun.launcher.units import Size

GOOD = """\
name: llava-lora
workdir: .
launcher: deepspeed
python: /opt/conda/bin/python
script: llava/train/train_mem.py
args: {lora_enable: true, output_dir: ./checkpoints/llava-lora, lora_r: 128, mm_lr: 2.0e-5, tags: [a, 1], x: null}
env: {NCCL_ASYNC_ERROR_HANDLING: "1", TOKENIZERS_PARALLELISM: false, EPS: 1.0e-8}
gpus: 8
batch: {per_device: 16, grad_accum: 1}
lr: {value: 2.0e-4}
deepspeed: {config: scripts/zero3.json}
checkpoints: {dir: ./checkpoints/llava-lora, resume_arg: --resume_from_checkpoint}
limits: {host_memory: 90%, min_available: 4GiB, vram: 95%, hang_after: 30m}
monitor: {interval: 0.5}
stop_grace: 30s
ladder:
  - {on: [host_oom], gpus: 6}
  - {on: [cuda_oom], batch: halve}
  - {on: [cuda_oom, host_oom], zero3_offload: true}
  - {on: [nan_loss], lr: halve}
  - on: save_failed
    save_only_model: true
    gather_16bit_on_save: false
    args: {save_safetensors: false}
    env: {GUARDRUN_NOTE: light-save}
restarts: {max: 8, backoff: [10s, 5m]}
wait_for_gpus: 30m
"""


def write(tmp_path: Path, body: str, name: str = "job.yaml") -> Path:
    """The recipe in tmp_path, beside the files a good recipe refers to."""
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "llava" / "train").mkdir(parents=True, exist_ok=True)
    (tmp_path / "llava" / "train" / "train_mem.py").write_text("print('hi')\n")
    (tmp_path / "scripts").mkdir(exist_ok=True)
    (tmp_path / "scripts" / "zero3.json").write_text("{}\n")
    path = tmp_path / name
    path.write_text(body)
    return path


def test_good_recipe_every_field(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    assert recipe.path == tmp_path / "job.yaml"
    assert (recipe.name, recipe.workdir, recipe.launcher) == ("llava-lora", tmp_path, "deepspeed")
    assert recipe.python == "/opt/conda/bin/python"
    assert recipe.script == tmp_path / "llava/train/train_mem.py" and recipe.module is None
    assert recipe.args == (("lora_enable", True), ("output_dir", "./checkpoints/llava-lora"),
                           ("lora_r", 128), ("mm_lr", 2.0e-5), ("tags", ("a", 1)), ("x", None))
    assert recipe.args_is_list is False
    # numbers and booleans reach the environment as written
    assert recipe.env == (("NCCL_ASYNC_ERROR_HANDLING", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                          ("EPS", "1.0e-8"))
    assert recipe.gpus == 8
    assert recipe.batch == Batch(16, 1, "--per_device_train_batch_size", "--gradient_accumulation_steps")
    assert recipe.lr == LearningRate(2.0e-4, "--learning_rate")
    assert recipe.deepspeed == DeepSpeedCfg(tmp_path / "scripts/zero3.json", "--deepspeed")
    assert recipe.checkpoints == Checkpoints(tmp_path / "checkpoints/llava-lora", "--resume_from_checkpoint")
    assert recipe.limits == Limits(host_memory=Size("90%", fraction=0.9), min_available=Size("4GiB", bytes=4 << 30),
                                   vram=Size("95%", fraction=0.95), hang_after=1800.0)
    assert recipe.monitor == Monitor(0.5) and recipe.stop_grace == 30.0
    assert recipe.restarts == Restarts(8, (10.0, 300.0))
    assert recipe.wait_for_gpus == 1800.0
    assert recipe.ladder_given is True
    assert recipe.ladder == (
        Rung(on=(Kind.HOST_OOM,), gpus=6, line=17),
        Rung(on=(Kind.CUDA_OOM,), batch="halve", line=18),
        Rung(on=(Kind.CUDA_OOM, Kind.HOST_OOM), zero3_offload=True, line=19),
        Rung(on=(Kind.NAN_LOSS,), lr=0.5, line=20),
        Rung(on=(Kind.SAVE_FAILED,), save_only_model=True, gather_16bit_on_save=False,
             args=(("save_safetensors", False),), env=(("GUARDRUN_NOTE", "light-save"),), line=21),
    )
    assert dataclasses.is_dataclass(recipe) and recipe.__dataclass_params__.frozen


def test_minimal_recipe_takes_the_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, "launcher: torchrun\nscript: train.py\n", name="my-job.v2.yaml"))
    assert recipe == Recipe(
        path=tmp_path / "my-job.v2.yaml", name="my-job.v2", workdir=tmp_path, launcher="torchrun",
        script=tmp_path / "train.py", module=None, args=(), args_is_list=False, env=(), gpus=1,
        batch=None, lr=None, deepspeed=None, checkpoints=None, limits=Limits(), ladder=(),
        ladder_given=False, restarts=Restarts(max=8, backoff=(10.0, 300.0)), monitor=Monitor(0.5),
        stop_grace=30.0, python=sys.executable)


def test_other_accepted_forms(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "run.py").write_text("")
    body = textwrap.dedent("""\
        workdir: job
        launcher: python
        script: run.py
        args: [--per_device_train_batch_size=16, --lr_scheduler_type, cosine, '-0.5']
        gpus: [3, 1, 7]
        lr: {value: 2e-4, arg: --lr}
        checkpoints: {dir: out, resume_arg: null, pattern: 'step_(\\d+)\\.pt'}
        monitor: {interval: 250ms}
        limits: {host_memory: 400MiB}
        ladder: []
        """)
    recipe = load_recipe(write(tmp_path, body))
    assert recipe.workdir == tmp_path / "job" and recipe.script == tmp_path / "job" / "run.py"
    assert recipe.args == ("--per_device_train_batch_size=16", "--lr_scheduler_type", "cosine", "-0.5")
    assert recipe.args_is_list is True
    assert recipe.gpus == (3, 1, 7)
    assert recipe.lr == LearningRate(2e-4, "--lr")  # PyYAML reads 2e-4 as a string; still a number here
    assert recipe.checkpoints == Checkpoints(tmp_path / "job" / "out", None, r"step_(\d+)\.pt")
    assert recipe.monitor.interval == 0.25 and recipe.limits.host_memory.bytes == 400 << 20
    assert (recipe.ladder, recipe.ladder_given) == ((), True)


def test_module_gpus_all_and_single_kind(tmp_path):
    body = "launcher: torchrun\nmodule: pkg.train\ngpus: all\nladder:\n  - {on: hang, dataloader_workers: 0}\n"
    recipe = load_recipe(write(tmp_path, body))
    assert (recipe.script, recipe.module, recipe.gpus) == (None, "pkg.train", "all")
    assert recipe.ladder == (Rung(on=(Kind.HANG,), dataloader_workers=0, line=5),)


BASE = "launcher: torchrun\nscript: train.py\n"  # lines 1-2; each case's own lines start at 3
BATCHED = BASE + "batch: {per_device: 4}\n"      # line 3

BAD = [
    # (recipe text, key, line, message fragment)
    (BASE + "gpu: 8\n", "gpu", 3, "unknown key 'gpu' (did you mean 'gpus'?)"),
    (BASE + "gpus: eight\n", "gpus", 3, "expected a GPU count >= 1, a list of GPU ids like [0, 1], or all, got 'eight'"),
    (BASE + "gpus: 0\n", "gpus", 3, "got 0"),
    (BASE + "gpus: -2\n", "gpus", 3, "got -2"),
    (BASE + "gpus: true\n", "gpus", 3, "got true"),
    (BASE + "gpus: [0, 0]\n", "gpus[1]", 3, "GPU 0 is listed twice"),
    (BASE + "gpus:\n  - 0\n  - -1\n", "gpus[1]", 5, "expected an integer >= 0, got -1"),
    (BASE + "gpus: []\n", "gpus", 3, "expected at least one GPU id"),
    (BASE + "batch: {per_device: 0}\n", "batch.per_device", 3, "expected an integer >= 1, got 0"),
    (BASE + "batch: {per_device: 4, grad_accum: -1}\n", "batch.grad_accum", 3, "expected an integer >= 1, got -1"),
    (BASE + "batch:\n  grad_accum: 2\n", "batch.per_device", 4, "required key missing: the micro-batch per GPU"),
    (BASE + "batch: {per_device: 4, per_devce_arg: --bs}\n", "batch.per_devce_arg", 3,
     "unknown key 'per_devce_arg' (did you mean 'per_device_arg'?)"),
    (BASE + "batch: 16\n", "batch", 3, "expected a mapping, got 16"),
    (BASE + "limits: {host_memory: 12G}\n", "limits.host_memory", 3,
     "write 12GiB (binary, 12×2^30) or 12GB (decimal, 12×10^9)"),
    (BASE + "limits: {host_memory: 150%}\n", "limits.host_memory", 3, "at most 100%"),
    (BASE + "limits: {min_available: -4GiB}\n", "limits.min_available", 3, "cannot be negative"),
    (BASE + "limits: {vram: 0}\n", "limits.vram", 3, "more than zero"),
    (BASE + "limits: {host_mem: 90%}\n", "limits.host_mem", 3, "did you mean 'host_memory'?"),
    (BASE + "limits:\n  host_memory: 90%\n  hang_after: soon\n", "limits.hang_after", 5,
     "expected a duration like 30s"),
    (BASE + "stop_grace: -5s\n", "stop_grace", 3, "a duration cannot be negative"),
    (BASE + "wait_for_gpus: 0\n", "wait_for_gpus", 3, "expected a duration above zero, got 0"),
    (BASE + "wait_for_gpus: a while\n", "wait_for_gpus", 3, "expected a duration like 30s"),
    (BASE + "wait_for_gpu: 5m\n", "wait_for_gpu", 3, "did you mean 'wait_for_gpus'?"),
    (BASE + "monitor: {interval: 0.01}\n", "monitor.interval", 3, "from 0.05 to 60 seconds, got 0.01"),
    (BASE + "restarts: {max: -1}\n", "restarts.max", 3, "expected an integer >= 0, got -1"),
    (BASE + "restarts: {backoff: [10s]}\n", "restarts.backoff", 3, "expected two durations [first, cap]"),
    (BASE + "restarts: {backoff: [5m, 10s]}\n", "restarts.backoff", 3, "is longer than the cap"),
    (BASE + "restarts: {backoff: [10s, later]}\n", "restarts.backoff[1]", 3, "got 'later'"),
    ("launcher: torchrun\nscript: nope/train.py\n", "script", 2, "script not found: {tmp}/nope/train.py"),
    (BASE + "module: pkg.train\n", "module", 3, "give either `script:` or `module:`, not both"),
    ("launcher: torchrun\ngpus: 1\n", "script", 1, "required key missing: give `script:`"),
    ("launcher: python\nmodule: pkg/train.py\n", "module", 2, "expected a python module like pkg.train"),
    ("script: train.py\ngpus: 2\n", "launcher", 1, "required key missing: how to start the job"),
    ("launcher: torchrn\nscript: train.py\n", "launcher", 1,
     "expected one of torchrun, deepspeed, python, accelerate, command, got 'torchrn' (did you mean 'torchrun'?)"),
    (BASE + "workdir: nowhere\n", "workdir", 3, "directory not found: {tmp}/nowhere"),
    (BASE + "deepspeed: {config: scripts/zero2.json}\n", "deepspeed.config", 3,
     "DeepSpeed config not found: {tmp}/scripts/zero2.json"),
    (BASE + "deepspeed: {arg: --deepspeed}\n", "deepspeed.config", 3, "required key missing"),
    (BASE + "lr: {value: -1}\n", "lr.value", 3, "expected a positive number, got -1"),
    (BASE + "lr: {value: fast}\n", "lr.value", 3, "got 'fast'"),
    (BASE + "checkpoints: {dir: out, pattern: 'ckpt-\\d+'}\n", "checkpoints.pattern", 3,
     "expected a regex with exactly 1 group(s) (the step, like 'checkpoint-(\\d+)')"),
    (BASE + "checkpoints: {dir: out, pattern: 'ckpt-(\\d+'}\n", "checkpoints.pattern", 3, "not a valid regular"),
    (BASE + "ladder:\n  - {gpus: 4}\n", "ladder[0].on", 4, "required key missing: the failure kinds"),
    (BASE + "ladder:\n  - {on: [host_oom], gpus: 4}\n  - {on: [cuda_om], gpus: 2}\n", "ladder[1].on[0]", 5,
     "unknown failure kind 'cuda_om' (did you mean 'cuda_oom'?)"),
    (BASE + "ladder:\n  - {on: user_error, gpus: 4}\n", "ladder[0].on", 4, "user_error never changes the configuration"),
    (BASE + "ladder:\n  - {on: [], gpus: 4}\n", "ladder[0].on", 4, "expected at least one failure kind"),
    (BASE + "ladder:\n  - {on: [hang, hang], gpus: 4}\n", "ladder[0].on[1]", 4, "hang is listed twice"),
    (BASE + "ladder:\n  - {on: [cuda_oom]}\n", "ladder[0]", 4, "this rung changes nothing"),
    (BATCHED + "ladder:\n  - on: cuda_oom\n    batch: third\n", "ladder[0].batch", 6,
     "expected halve or a micro-batch >= 1, got 'third'"),
    (BASE + "ladder:\n  - {on: cuda_oom, batch: halve}\n", "ladder[0].batch", 4, "has no `batch:` section"),
    (BASE + "ladder:\n  - {on: nan_loss, lr: halve}\n", "ladder[0].lr", 4, "has no `lr:` section"),
    (BASE + "ladder:\n  - {on: cuda_oom, zero_stage: 4}\n", "ladder[0].zero_stage", 4, "from 0 to 3, got 4"),
    (BASE + "ladder:\n  - {on: cuda_oom, zero3_ofload: true}\n", "ladder[0].zero3_ofload", 4,
     "did you mean 'zero3_offload'?"),
    (BASE + "ladder:\n  - {on: cuda_oom, zero3_offload: maybe}\n", "ladder[0].zero3_offload", 4,
     "expected true or false, got 'maybe'"),
    (BASE + "ladder:\n  on: cuda_oom\n", "ladder", 4, "expected a list of rungs"),
    (BASE + "ladder:\n  - cuda_oom\n", "ladder[0]", 4, "expected a rung like {on: [cuda_oom], batch: halve}"),
    (BASE + "name: my job\n", "name", 3, "expected a name of letters, digits, '.', '_' and '-', got 'my job'"),
    (BASE + "name: ..\n", "name", 3, "expected a name of letters"),
    (BASE + "args: [--epochs, 3]\n", "args[1]", 3, "expected a string, got 3 (quote it: '3')"),
    (BASE + "args: {lora: {r: 8}}\n", "args.lora", 3, "expected a value or a list of values, got a mapping"),
    (BASE + "args: --epochs 3\n", "args", 3, "expected a mapping of arguments or a list of strings"),
    (BASE + "env: {A: {b: 1}}\n", "env.A", 3, "expected a string, number or boolean, got a mapping"),
    (BASE + "env: {A: null}\n", "env.A", 3, "got nothing (null)"),
    (BASE + "env:\n  1BAD: x\n", "env.1BAD", 4, "expected a variable name"),
    (BASE + "env: {A: !foo x}\n", "env.A", 3, "got 'x' tagged !foo"),
    (BASE + "args: {run: !!python/name:os.system x}\n", "args.run", 3, "could not determine a constructor"),
    (BASE + "args: {since: 2024-13-45}\n", "args.since", 3, "cannot read '2024-13-45': month must be in 1..12"),
    (BASE + "args: [--note, null]\n", "args[1]", 3, "expected a string, got nothing (null)"),
    (BASE + "gpus: 1\nlr: {value: 1.0}\ngpus: 2\n", "gpus", 5, "duplicate key (first given at line 3)"),
    (BASE + "gpus: [1, 2\n", "yaml", 4, "invalid YAML"),
    (BASE + "gpus: 1\n\tbatch: 2\n", "yaml", 4, "invalid YAML"),
    ("- launcher: torchrun\n", "recipe", 1, "the top level must be a mapping"),
    ("", "recipe", 1, "the file is empty"),
    ("# only a comment\n", "recipe", 1, "the file is empty"),
    ("---\nlauncher: torchrun\n---\nscript: train.py\n", "yaml", 3, "invalid YAML"),
    (BASE + "progress: {step_regex: 'step \\d+'}\n", "progress.step_regex", 3, "expected a regex with 1 or 2 group(s)"),
    (BASE + "progress: {loss_regex: 'loss=(\\S+) (\\S+)'}\n", "progress.loss_regex", 3, "exactly 1 group(s)"),
    (BASE + "progress: {loss_regex: 'loss=(['}\n", "progress.loss_regex", 3, "not a valid regular expression"),
    (BASE + "progress: {}\n", "progress", 3, "give at least one of step_regex, loss_regex"),
    (BASE + "progress: {step: x}\n", "progress.step", 3, "unknown key 'step'"),
    (BASE + "success: {}\n", "success", 3, "give at least one of regex, file"),
    (BASE + "success: {regex: '(unclosed'}\n", "success.regex", 3, "not a valid regular expression"),
    (BASE + "success: {file: 3}\n", "success.file", 3, "expected a non-empty string, got 3"),
    (BASE + "nan_patience: 0\n", "nan_patience", 3, "expected an integer >= 1, got 0"),
    (BASE + "startup_window: soon\n", "startup_window", 3, "expected a duration like 30s"),
    # issue 7: model, preflight, launcher: command
    (BASE + "model: {params: 7B}\n", "model.params", 3, "expected a positive number, got '7B'"),
    (BASE + "model: {params: 7000}\n", "model.params", 3, "expected a parameter count like 7e9"),
    (BASE + "model: {trainable: qlora}\n", "model.trainable", 3, "expected one of full, lora, got 'qlora'"),
    (BASE + "model:\n  params: 7e9\n  lora_rnak: 8\n", "model.lora_rnak", 5, "did you mean 'lora_rank'?"),
    (BASE + "model: {precision: bfloat16}\n", "model.precision", 3, "got 'bfloat16' (did you mean 'bf16'?)"),
    (BASE + "model: {seq_len: 0}\n", "model.seq_len", 3, "expected an integer >= 1, got 0"),
    (BASE + "model: {zero_stage: 4}\n", "model.zero_stage", 3, "from 0 to 3, got 4"),
    (BASE + "model: {offload: cpu}\n", "model.offload", 3, "expected one of none, optimizer, all, got 'cpu'"),
    (BASE + "model: 7e9\n", "model", 3, "expected a mapping like {params: 7e9, trainable: lora}"),
    (BASE + "preflight: maybe\n", "preflight", 3, "expected on or off, got 'maybe'"),
    (BASE + "command: [llamafactory-cli, train]\n", "command", 3, "`command:` needs `launcher: command`"),
    ("launcher: command\n", "command", 1, "required key missing: `launcher: command` needs `command:`"),
    ("launcher: command\ncommand: []\n", "command", 2, "expected at least the program to run"),
    ("launcher: command\ncommand: [xtuner, 2]\n", "command[1]", 2, "expected a non-empty string, got 2"),
    ("launcher: command\ncommand: [x]\nscript: train.py\n", "script", 3, "remove `script:`"),
    ("launcher: command\ncommand: [x]\nargs_style: k=v\n", "args_style", 3,
     "expected one of flags, key=value, got 'k=v'"),
    ("launcher: command\ncommand: [x]\nargs_group: --cfg-options\n", "args_group", 3,
     "args_group only applies with `args_style: key=value`"),
    ("launcher: command\ncommand: [x]\nargs_style: key=value\nargs_group: cfg-options\n", "args_group", 4,
     "expected a flag like --cfg-options"),
    ("launcher: command\ncommand: [x]\nranks_env: 2NPROC\n", "ranks_env", 3, "expected a variable name"),
]


@pytest.mark.parametrize("body,key,line,fragment", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_recipe(tmp_path, body, key, line, fragment):
    path = write(tmp_path, body)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    err = caught.value
    assert (err.path, err.key, err.line) == (path, key, line), str(err)
    assert fragment.replace("{tmp}", str(tmp_path)) in err.message
    assert str(err) == f"{path}:{line}: {key}: {err.message}"
    assert "Traceback" not in str(err)
    assert err.__cause__ is None or not isinstance(err.__cause__, RecipeError)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(tmp_path / "absent.yaml")
    assert str(caught.value) == f"{tmp_path}/absent.yaml:1: recipe: cannot read the file: No such file or directory"
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(RecipeError, match="cannot read the file: Is a directory"):
        load_recipe(tmp_path / "dir.yaml")


def test_file_stem_that_cannot_name_the_job(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, BASE, name="my job.yaml"))
    assert (caught.value.key, caught.value.line) == ("name", 1)
    assert "add a `name:` key" in caught.value.message
    assert load_recipe(write(tmp_path, BASE + "name: ok\n", name="my job.yaml")).name == "ok"


def test_did_you_mean_and_plain_unknown_keys(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, BASE + "restart: {max: 2}\n"))
    assert caught.value.message == "unknown key 'restart' (did you mean 'restarts'?)"
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, BASE + "zzz: 1\n"))
    assert caught.value.message.startswith("unknown key 'zzz' (known keys: name, workdir, launcher,")


def test_first_error_in_file_order_wins(tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, BASE + "gpus: 0\nstop_grace: -1s\n"))
    assert caught.value.key == "gpus"


def test_diagnosis_keys(tmp_path):
    body = BASE + textwrap.dedent("""\
        progress: {step_regex: 'it (\\d+)/(\\d+)', loss_regex: 'loss=(\\S+)'}
        success: {regex: 'Training finished', file: out/final/model.safetensors}
        nan_patience: 3
        startup_window: 2m
        """)
    recipe = load_recipe(write(tmp_path, body))
    assert recipe.progress == ProgressPatterns(r"it (\d+)/(\d+)", r"loss=(\S+)")
    assert recipe.success == SuccessEvidence("Training finished", tmp_path / "out/final/model.safetensors")
    assert (recipe.nan_patience, recipe.startup_window) == (3, 120.0)
    bare = load_recipe(write(tmp_path, BASE))
    assert (bare.progress, bare.success, bare.nan_patience, bare.startup_window) == (None, None, 1, 600.0)


def test_rung_table_covers_every_rung_field_in_order():
    """The table read from the file and the dataclass list the same keys, in one order: the
    'this rung changes nothing' message and `describe_rung` list them from the dataclass."""
    assert [f.name for f in dataclasses.fields(Rung)] == [f.key for f in RUNG] + ["line"]
