"""From a Plan (and the checkpoint to resume from) to the exact command to run.

Pure: the caller passes everything that would otherwise come from the machine (the
attempt number, a free port, where derived files go). `guardrun plan` prints what this
returns, so what a user reads is exactly what runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import accelerate, dsconfig, kvargs, multinode
from .plan import Plan
from .spec import Recipe
from .trainer import hf_overrides
from .units import is_number


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # what guardrun sets on top of its own environment
    cwd: Path
    resume_from: Path | None = None
    files: tuple[tuple[Path, str], ...] = field(default=())  # derived files to write first


#: The derived DeepSpeed config's name in the attempt's folder.
DERIVED_DS_CONFIG = "deepspeed.json"


@dataclass(frozen=True)
class Resume:
    """How the attempt resumes (from launcher.resume's decisions)."""

    path: Path | None = None
    load_universal: bool = False  # the checkpoint was converted for a new world size
    weights_only: bool = False    # pass it through checkpoints.weights_arg, not resume_arg


def build(recipe: Recipe, plan: Plan, *, attempt: int = 1, resume: Resume = Resume(),
          port: int | None = None, files_dir: Path | None = None,
          log_dir: Path | None = None) -> LaunchSpec:
    """The launch for one attempt of `recipe` under `plan`.

    When the rung changes the DeepSpeed config (batch numbers, ZeRO stage, offload, a
    universal checkpoint to load), the derived config goes to `files_dir` (the attempt's
    folder) and the job is pointed at it; the user's file is never modified.
    With `log_dir` (the attempt's folder) each rank's output and error file go under
    `log_dir/ranks` (see `rank_logs`).
    """
    files, ds_path = _deepspeed_file(recipe, plan, resume, files_dir)
    args = _job_args(recipe, plan, resume, ds_path)
    launcher_argv, log_env = rank_logs(recipe.launcher, log_dir)
    if recipe.node.multi:
        node_argv, node_files = multinode.launcher_argv(recipe, plan, files_dir)
        files += node_files
    else:
        node_argv = _launcher_argv(recipe, plan, port)
    argv = node_argv + launcher_argv + _target(recipe) + tuple(args)
    return LaunchSpec(argv=argv, env=_env(recipe, plan, attempt) + log_env, cwd=recipe.workdir,
                      resume_from=resume.path, files=files)


#: Per-rank output and error files live in this folder of the attempt's folder.
RANKS_DIR = "ranks"


def rank_logs(launcher: str, log_dir: Path | None) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Launcher flags and environment that keep each rank's output and error file.

    - torchrun: `--log-dir D --redirects 3 --tee 3` writes D/<run id>/attempt_0/<local
      rank>/{stdout,stderr}.log, still shows every line (tagged `[defaultN]:`), and gives
      each worker its own TORCHELASTIC_ERROR_FILE (error.json beside them), which an
      `@record` entry point fills (torch 2.13, elastic/multiprocessing/api.py).
    - deepspeed: `--enable_each_rank_log D` writes D/<time>_rank<N>.log and sends nothing
      to the console; guardrun follows those files. It sets no error file per rank, and
      one shared file would keep the last rank's error, not the first: none is set.
    - python: one process, so one error file: TORCHELASTIC_ERROR_FILE in the attempt's folder.
    """
    if log_dir is None:
        return (), ()
    ranks = str(log_dir / RANKS_DIR)
    python_error_file = (("TORCHELASTIC_ERROR_FILE", str(log_dir / "error.json")),)
    if launcher == "torchrun":
        return ("--log-dir", ranks, "--redirects", "3", "--tee", "3"), ()
    if launcher == "deepspeed":
        return ("--enable_each_rank_log", ranks), ()
    if launcher == "accelerate":  # its torchrun path keeps the files; one process gets the env's
        return accelerate.rank_log_flags(log_dir / RANKS_DIR), python_error_file
    return (), python_error_file


def _deepspeed_file(recipe: Recipe, plan: Plan, resume: Resume,
                    files_dir: Path | None) -> tuple[tuple[tuple[Path, str], ...], Path | None]:
    if recipe.deepspeed is None:
        return (), None
    config = dsconfig.load(recipe.deepspeed.config)
    derived = dsconfig.derive(config, plan, load_universal=resume.load_universal)
    if derived == config:
        return (), recipe.deepspeed.config
    path = (files_dir or Path("<attempt dir>")) / DERIVED_DS_CONFIG
    return ((path, dsconfig.render(derived)),), path


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
    if recipe.launcher == "command":  # the tool's own launcher (llamafactory-cli, xtuner)
        return recipe.command
    if recipe.launcher == "accelerate":
        return accelerate.launch_argv(python, recipe.accelerate, plan.ranks, plan.gpu_ids, port)
    return (python,)


def _target(recipe: Recipe) -> tuple[str, ...]:
    if recipe.launcher == "command":
        return ()
    if recipe.module:
        return ("-m", recipe.module)
    return (str(recipe.script),)


def _job_args(recipe: Recipe, plan: Plan, resume: Resume, ds_path: Path | None) -> list[str]:
    if recipe.args_is_list:
        tokens = list(recipe.args)
    elif recipe.args_style == kvargs.KV:
        tokens = kvargs.render(recipe.args, lambda key, value: [key, *render_value(value)])
    else:
        tokens = render_mapping(recipe.args)
    overrides: list[tuple[str, object]] = []
    if recipe.batch and plan.per_device is not None:
        overrides.append((recipe.batch.per_device_arg, plan.per_device))
        overrides.append((recipe.batch.grad_accum_arg, plan.grad_accum))
    if recipe.lr and plan.lr is not None:
        overrides.append((recipe.lr.arg, format_number(plan.lr)))
    if recipe.deepspeed and ds_path is not None:
        overrides.append((recipe.deepspeed.arg, str(ds_path)))
    overrides.extend(hf_overrides(recipe, plan))  # none for a plain script (trainer.py)
    overrides.extend(plan.args)
    overrides.extend(_resume_args(recipe, resume))
    if recipe.args_style == kvargs.KV:
        return _set_kv_style(recipe, tokens, overrides)
    for key, value in overrides:
        if not written_as(tokens, _flag(key), value):
            tokens = set_arg(tokens, _flag(key), value)
    return tokens


def written_as(tokens: list[str], flag: str, value: object) -> bool:
    """The args already give `flag` this number, maybe spelled otherwise (`2e-4` for 0.0002):
    keep the user's spelling, so the first rung is the command their project documents."""
    if isinstance(value, bool) or flag not in tokens:
        return False
    at = tokens.index(flag) + 1
    try:
        return at < len(tokens) and float(tokens[at]) == float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _set_kv_style(recipe: Recipe, tokens: list[str], overrides: list[tuple[str, object]]) -> list[str]:
    """key=value overrides (flag keys stay flags); batch and lr only where a rung changed them."""
    written: dict[str, object] = {}
    if recipe.batch:
        written.update({recipe.batch.per_device_arg: recipe.batch.per_device,
                        recipe.batch.grad_accum_arg: recipe.batch.grad_accum})
    if recipe.lr:
        written[recipe.lr.arg] = format_number(recipe.lr.value)
    if recipe.deepspeed:  # the tool's config file names it already; a derived copy is passed
        written[recipe.deepspeed.arg] = str(recipe.deepspeed.config)
    for key, value in kvargs.only_changed(overrides, written):
        tokens = (set_arg(tokens, key, value) if kvargs.is_flag_key(key)
                  else kvargs.set_kv(tokens, key, value, recipe.args_group))
    return tokens


def _resume_args(recipe: Recipe, resume: Resume) -> list[tuple[str, object]]:
    spec = recipe.checkpoints
    if resume.path is None or spec is None:
        return []
    arg = spec.weights_arg if resume.weights_only else spec.resume_arg
    return [(arg, str(resume.path))] if arg else []


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
                while index < len(tokens) and not is_flag(tokens[index]):
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


def is_flag(token: str) -> bool:
    """`--lr` or `-v`, not a negative number like `-1`."""
    return token.startswith("-") and not is_number(token)


def _env(recipe: Recipe, plan: Plan, attempt: int) -> tuple[tuple[str, str], ...]:
    env = dict(recipe.env)
    env.update(plan.env)
    if plan.gpu_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, plan.gpu_ids))
        # The ids are NVML's, in PCI bus order; CUDA's default order (FASTEST_FIRST)
        # can number the GPUs differently on a machine with mixed models.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    # Unbuffered output: guardrun reads progress and errors from it as they happen.
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["GUARDRUN_JOB"] = recipe.name
    env["GUARDRUN_ATTEMPT"] = str(attempt)
    env["GUARDRUN_RUNG"] = str(plan.rung)
    if recipe.ranks_env:  # tools that start torchrun themselves: NPROC_PER_NODE
        env[recipe.ranks_env] = str(plan.ranks)
    env.update(multinode.env(recipe))
    return tuple(env.items())
