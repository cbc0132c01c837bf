"""From a Plan (and the checkpoint to resume from) to the exact command to run.

Pure: the caller passes everything that would otherwise come from the machine (the
attempt number, a free port, where derived files go). `guardrun plan` prints what this
returns, so what a user reads is exactly what runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .ladder import Plan
from .recipe import Recipe


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # what guardrun sets on top of its own environment
    cwd: Path
    resume_from: Path | None = None
    files: tuple[tuple[Path, str], ...] = field(default=())  # derived files to write first


def build(recipe: Recipe, plan: Plan, *, attempt: int = 1, resume_from: Path | None = None,
          port: int | None = None) -> LaunchSpec:
    """The launch for one attempt of `recipe` under `plan`."""
    argv = _launcher_argv(recipe, plan, port) + _target(recipe) + tuple(_job_args(recipe, plan, resume_from))
    return LaunchSpec(argv=argv, env=_env(recipe, plan, attempt), cwd=recipe.workdir,
                      resume_from=resume_from)


def _launcher_argv(recipe: Recipe, plan: Plan, port: int | None) -> tuple[str, ...]:
    # `python -m torch.distributed.run` is what the `torchrun` script runs; going through
    # the recipe's interpreter keeps the job in the environment the user chose even when
    # guardrun itself is installed elsewhere.
    python = recipe.python
    if recipe.launcher == "torchrun":
        # --max-restarts 0: restarts are guardrun's job, with a different configuration.
        return (python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                "--nproc-per-node", str(plan.ranks), "--max-restarts", "0")
    if recipe.launcher == "deepspeed":
        argv = [python, "-m", "deepspeed.launcher.runner"]
        # With an explicit --include/--num_gpus DeepSpeed ignores CUDA_VISIBLE_DEVICES.
        if plan.gpu_ids is not None:
            argv += ["--include", "localhost:" + ",".join(map(str, plan.gpu_ids))]
        else:
            argv += ["--num_gpus", str(plan.ranks)]
        if port is not None:
            argv += ["--master_port", str(port)]
        return tuple(argv)
    return (python,)


def _target(recipe: Recipe) -> tuple[str, ...]:
    if recipe.module:
        return ("-m", recipe.module)
    return (str(recipe.script),)


def _job_args(recipe: Recipe, plan: Plan, resume_from: Path | None) -> list[str]:
    if recipe.args_is_list:
        tokens = list(recipe.args)
    else:
        tokens = render_mapping(recipe.args)
    overrides: list[tuple[str, object]] = []
    if recipe.batch and plan.per_device is not None:
        overrides.append((recipe.batch.per_device_arg, plan.per_device))
        overrides.append((recipe.batch.grad_accum_arg, plan.grad_accum))
    if recipe.lr and plan.lr is not None:
        overrides.append((recipe.lr.arg, format_number(plan.lr)))
    if recipe.deepspeed:
        overrides.append((recipe.deepspeed.arg, str(recipe.deepspeed.config)))
    if plan.gradient_checkpointing is not None:
        overrides.append(("--gradient_checkpointing", plan.gradient_checkpointing))
    if plan.save_only_model is not None:
        overrides.append(("--save_only_model", plan.save_only_model))
    if plan.dataloader_workers is not None:
        overrides.append(("--dataloader_num_workers", plan.dataloader_workers))
    overrides.extend(plan.args)
    if resume_from is not None and recipe.checkpoints and recipe.checkpoints.resume_arg:
        overrides.append((recipe.checkpoints.resume_arg, str(resume_from)))
    for key, value in overrides:
        tokens = set_arg(tokens, _flag(key), value)
    return tokens


def _flag(key: str) -> str:
    return key if key.startswith("-") else f"--{key}"


def render_value(value: object) -> list[str]:
    """YAML value -> argument tokens, the way HfArgumentParser reads them."""
    if value is None:
        return []
    if isinstance(value, bool):
        return ["True" if value else "False"]
    if isinstance(value, (list, tuple)):
        return [token for item in value for token in render_value(item)]
    if isinstance(value, float):
        return [format_number(value)]
    return [str(value)]


def format_number(value: float) -> str:
    """Shortest text that reads back as the same float (2e-04 stays readable)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def render_mapping(args: tuple[tuple[str, object], ...]) -> list[str]:
    tokens: list[str] = []
    for key, value in args:
        tokens.append(_flag(key))
        tokens.extend(render_value(value))
    return tokens


def set_arg(tokens: list[str], flag: str, value: object) -> list[str]:
    """`tokens` with `flag`'s value replaced (`--k v` or `--k=v`), or appended if absent."""
    values = render_value(value)
    out: list[str] = []
    index, replaced = 0, False
    while index < len(tokens):
        token = tokens[index]
        if token == flag or token.startswith(flag + "="):
            index += 1
            if token == flag:  # skip the old values: tokens up to the next flag
                while index < len(tokens) and not _is_flag(tokens[index]):
                    index += 1
            if not replaced:
                out += [flag, *values]
                replaced = True
            continue
        out.append(token)
        index += 1
    if not replaced:
        out += [flag, *values]
    return out


def _is_flag(token: str) -> bool:
    return token.startswith("-") and not _looks_numeric(token)


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _env(recipe: Recipe, plan: Plan, attempt: int) -> tuple[tuple[str, str], ...]:
    env = dict(recipe.env)
    env.update(plan.env)
    if plan.gpu_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, plan.gpu_ids))
    # Unbuffered output: guardrun reads progress and errors from it as they happen.
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["GUARDRUN_JOB"] = recipe.name
    env["GUARDRUN_ATTEMPT"] = str(attempt)
    env["GUARDRUN_RUNG"] = str(plan.rung)
    return tuple(env.items())
