"""Find the model a recipe trains and read its shape: the only file reading the estimate needs.

`model.path` is a local folder (relative to workdir) or a hub id like
lmsys/vicuna-13b-v1.5, looked up in the Hugging Face cache ($HF_HUB_CACHE, else
$HF_HOME/hub, else ~/.cache/huggingface/hub) without any network access. Without a
readable config.json, `model.params` (and `vision_params`, `vocab_size`) stand in.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .params import ConfigError, Shape, count, from_count
from .spec import Model

#: Files torch.load reads whole into each rank's private memory. safetensors files are
#: mmapped instead: their pages are shared page cache, counted once for all ranks.
_PRIVATE_SHARDS = ("*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class ModelInfo:
    shape: Shape | None
    shard_bytes: int | None = None  # the largest private checkpoint file, when the folder is local
    note: str = ""                  # why there is no shape, or where it came from


def resolve(model: Model | None, workdir: Path, env: dict[str, str] | None = None) -> ModelInfo:
    """The shape of `model` from its config.json, else from `params`; never raises."""
    if model is None:
        return ModelInfo(None, note="no `model:` in the recipe: memory not estimated")
    env = dict(os.environ) if env is None else env
    folder = find_folder(model.path, workdir, env) if model.path else None
    if folder is not None:
        try:
            config = json.loads((folder / "config.json").read_text())
            shape = count(config, source=f"{folder / 'config.json'}")
        except (OSError, ValueError, ConfigError) as err:
            note = f"cannot read {folder / 'config.json'}: {err}"
        else:
            return ModelInfo(_override(shape, model), _largest_shard(folder), shape.source)
    else:
        note = f"config.json of {model.path} not found here" if model.path else ""
    if model.params:
        shape = from_count(model.params, model.vocab_size, model.vision_params or 0.0,
                           source=f"model.params {model.params:.3g}")
        return ModelInfo(shape, None, "; ".join(filter(None, [note, shape.source])))
    return ModelInfo(None, note=(note or "no model.path or model.params") + ": memory not estimated")


def find_folder(path: str, workdir: Path, env: dict[str, str]) -> Path | None:
    """A folder holding config.json: the path itself, or the newest cached snapshot of a hub id."""
    local = Path(os.path.expanduser(path))
    local = local if local.is_absolute() else workdir / local
    if (local / "config.json").is_file():
        return local
    if path.count("/") != 1 or path.startswith((".", "/", "~")):
        return None
    cache = Path(env.get("HF_HUB_CACHE") or Path(env.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    snapshots = cache.expanduser() / ("models--" + path.replace("/", "--")) / "snapshots"
    try:
        found = sorted((p for p in snapshots.iterdir() if (p / "config.json").is_file()),
                       key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return found[-1] if found else None


def _override(shape: Shape, model: Model) -> Shape:
    """What the recipe says wins over config.json: a vision tower config.json does not describe."""
    if model.vision_params is not None and not shape.vision:
        vision = int(model.vision_params)
        return replace(shape, vision=vision, total=shape.total + vision)
    return shape


def _largest_shard(folder: Path) -> int | None:
    sizes = [p.stat().st_size for pattern in _PRIVATE_SHARDS for p in folder.glob(pattern) if p.is_file()]
    return max(sizes) if sizes else None
