"""Is the job a Hugging Face TrainingArguments script, and what does it already run with?

Some rungs change a setting that only an HF `TrainingArguments` parser has a flag for:
`gradient_checkpointing` (`--gradient_checkpointing`), `save_only_model`
(`--save_only_model`) and `dataloader_workers` (`--dataloader_num_workers`). A plain
argparse script given one of those flags exits with `unrecognized arguments` (issue 13
§2: a host OOM relaunched a plain script with `--dataloader_num_workers 0` and guardrun
reported a user error). So the default ladder holds such rungs only for an HF script,
decided here, before the first launch, from the recipe alone (`guardrun plan` shows the
same ladder that runs):

1. declared: `trainer: hf` or `trainer: plain` (default `auto`);
2. a tool known to parse TrainingArguments: `launcher: command` with llamafactory-cli;
3. the recipe's args (or its `batch:`/`lr:` argument names) give a flag only
   TrainingArguments has (`--per_device_train_batch_size`, `--save_strategy`, ...), or
   `--output_dir` together with `--deepspeed`;
4. a rung of the recipe's own `ladder:` sets one of those keys (the user says the script
   takes it);
5. else plain.

Pure, except `dataloader_workers`, which reads a tool's own YAML config (LLaMA-Factory's
`train cfg.yaml`) the way command.build reads the DeepSpeed config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .plan import Plan
from .rungs import HF_RUNG_FLAGS
from .spec import Recipe

#: Tools whose command line and config file are read by HfArgumentParser into TrainingArguments.
HF_TOOLS = frozenset({"llamafactory-cli", "lmf"})
#: TrainingArguments fields a plain script rarely names (transformers 4.x/5.x training_args.py).
HF_FLAGS = frozenset({
    "per_device_train_batch_size", "per_device_eval_batch_size", "save_strategy", "eval_strategy",
    "evaluation_strategy", "logging_strategy", "save_total_limit", "lr_scheduler_type", "report_to",
    "dataloader_num_workers", "save_only_model", "load_best_model_at_end", "gradient_checkpointing",
})
#: TrainingArguments.dataloader_num_workers's default: an HF script that sets nothing runs 0 workers.
HF_DEFAULT_WORKERS = 0


@dataclass(frozen=True)
class Trainer:
    hf: bool
    why: str  # for `guardrun plan`: how it was decided


def trainer(recipe: Recipe) -> Trainer:
    """Whether rungs may pass HF TrainingArguments flags to this job, and why."""
    declared = recipe.trainer
    if declared != "auto":
        return Trainer(declared == "hf", f"declared (trainer: {declared})")
    if recipe.launcher == "command" and recipe.command and Path(recipe.command[0]).name in HF_TOOLS:
        return Trainer(True, f"{Path(recipe.command[0]).name} parses HF TrainingArguments")
    named = sorted(HF_FLAGS & arg_names(recipe))
    if named:
        return Trainer(True, f"the recipe passes --{named[0]}, an HF TrainingArguments flag")
    names = arg_names(recipe)
    if recipe.deepspeed and "output_dir" in names and recipe.deepspeed.arg.lstrip("-") == "deepspeed":
        return Trainer(True, "the recipe passes --output_dir and --deepspeed (HF TrainingArguments)")
    for index, rung in enumerate(recipe.ladder if recipe.ladder_given else ()):
        key = next((k for k in HF_RUNG_FLAGS if getattr(rung, k) is not None), None)
        if key:
            return Trainer(True, f"ladder[{index}] sets {key} (--{HF_RUNG_FLAGS[key]})")
    return Trainer(False, "nothing in the recipe names one; declare `trainer: hf` if the script is one")


def hf_overrides(recipe: Recipe, plan: Plan) -> list[tuple[str, object]]:
    """The TrainingArguments flags `plan` sets, as (name, value): none for a plain script,
    and no `dataloader_num_workers` the job already runs with (it would change nothing)."""
    if not trainer(recipe).hf:
        return []
    out: list[tuple[str, object]] = []
    for key, flag in HF_RUNG_FLAGS.items():
        value = getattr(plan, key)
        if value is None or (key == "dataloader_workers" and value == dataloader_workers(recipe)[0]):
            continue
        out.append((flag, value))
    return out


def arg_names(recipe: Recipe) -> set[str]:
    """The argument names the job is given, without dashes: its args and the batch/lr args."""
    names: set[str] = set()
    if recipe.args_is_list:
        for token in recipe.args:
            if token.startswith("--"):
                names.add(token[2:].split("=", 1)[0])
            elif "=" in token and not token.startswith("-"):
                names.add(token.split("=", 1)[0])
    else:
        names.update(str(key).lstrip("-") for key, _ in recipe.args)
    if recipe.batch:
        names.update(arg.lstrip("-") for arg in (recipe.batch.per_device_arg, recipe.batch.grad_accum_arg))
    if recipe.lr:
        names.add(recipe.lr.arg.lstrip("-"))
    return names


def dataloader_workers(recipe: Recipe) -> tuple[int | None, str]:
    """The loader workers the job runs with before any rung, and where that was read.

    The recipe's args win (they are on the command line), then a tool's YAML config
    named in `command:`, then TrainingArguments' default 0 for an HF script; None when
    unknown (a plain script: its own default).
    """
    value = _arg_value(recipe, "dataloader_num_workers")
    if value is not None:
        return value, "the recipe's args"
    for path in _tool_configs(recipe):
        value = _yaml_workers(path)
        if value is not None:
            return value, str(path)
    if trainer(recipe).hf:
        return HF_DEFAULT_WORKERS, "TrainingArguments' default"
    return None, ""


def _arg_value(recipe: Recipe, name: str) -> int | None:
    if recipe.args_is_list:
        tokens = list(recipe.args)
        for index, token in enumerate(tokens):
            if token == f"--{name}" and index + 1 < len(tokens):
                return _int(tokens[index + 1])
            for prefix in (f"--{name}=", f"{name}="):
                if token.startswith(prefix):
                    return _int(token[len(prefix):])
        return None
    for key, value in recipe.args:
        if str(key).lstrip("-") == name:
            return _int(value)
    return None


def _tool_configs(recipe: Recipe) -> list[Path]:
    if recipe.launcher != "command":
        return []
    return [recipe.workdir / token for token in recipe.command[1:]
            if token.endswith((".yaml", ".yml")) and not token.startswith("-")]


def _yaml_workers(path: Path) -> int | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # not readable here (`guardrun plan` for another machine): unknown
    return _int(data.get("dataloader_num_workers")) if isinstance(data, dict) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(str(value))
    except ValueError:
        return None
