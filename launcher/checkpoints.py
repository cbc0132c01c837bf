"""Find checkpoints and tell the complete ones from the half-written ones.

Validation reads headers and sizes only, never tensor data: a directory of 50
checkpoints of many GB each must validate in well under a second.

What "complete" means (FIELD_NOTES, Hugging Face Trainer and DeepSpeed):
- HF `checkpoint-N/`: `trainer_state.json` is written last, so it must exist and parse;
  the model or adapter weights must be present; every safetensors file's size must
  equal what its header promises; every torch zip (`.pt`, `.pth`, `.bin`) must end in
  an end-of-central-directory record.
- DeepSpeed `global_stepN/` (alone or inside an HF checkpoint): `latest` names a tag
  that exists, and the tag has a model-states file and one optimizer shard per rank.
"""
from __future__ import annotations

import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

HF_PATTERN = re.compile(r"^checkpoint-(\d+)$")
DS_PATTERN = re.compile(r"^global_step(\d+)$")
WEIGHT_NAMES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin",
                "adapter_model.bin", "model.pt", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
#: Checkpoints set aside go into this folder of the checkpoint dir, not beside the
#: others: transformers' rotate_checkpoints globs `checkpoint-*` and reads the step with
#: an unanchored regex, so a `checkpoint-40.incomplete-...` left beside the live ones
#: would count as step 40 and, with save_total_limit, be deleted later.
QUARANTINE = "guardrun-quarantine"
_ZIP_EOCD = b"PK\x05\x06"
_EOCD_SEARCH = 65536 + 22  # the end record sits within the last 64 KiB + its 22 bytes


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    valid: bool = True
    reason: str = ""

    @property
    def name(self) -> str:
        return self.path.name


def find(directory: Path, pattern: str | None = None) -> list[Checkpoint]:
    """Every checkpoint in `directory`, oldest step first, each validated."""
    regex = re.compile(pattern) if pattern else None
    found = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        step = _step_of(entry.name, regex)
        if step is None or not (regex or entry.is_dir(follow_symlinks=False) or _is_lightning(entry)):
            continue
        path = Path(entry.path)
        reason = validate(path)
        found.append(Checkpoint(path, step, valid=not reason, reason=reason))
    return sorted(found, key=lambda c: (c.step, c.name))


def step_of(name: str, pattern: str | None = None) -> int | None:
    """The step a checkpoint's name says (`checkpoint-40`, `global_step40`,
    `epoch=0-step=40.ckpt`, or the recipe's `pattern`), None for any other name."""
    return _step_of(name, re.compile(pattern) if pattern else None)


def _step_of(name: str, regex: re.Pattern[str] | None) -> int | None:
    if regex is None and name.endswith(LIGHTNING_SUFFIX):
        return lightning_step(name)
    match = regex.match(name) if regex else HF_PATTERN.match(name) or DS_PATTERN.match(name)
    return int(match.group(1)) if match else None


#: PyTorch Lightning's ModelCheckpoint writes one file per save, named from its default
#: filename template '{epoch}-{step}': `epoch=0-step=10.ckpt`; a metric in the template adds
#: `-val_loss=0.50`, a name taken twice gets `-v1` (lightning 2.6.6, real_lightning_ok.txt).
LIGHTNING_SUFFIX = ".ckpt"


def lightning_step(name: str) -> int | None:
    """The step of a Lightning checkpoint file's name, read without a regex; None when the
    name carries none (`last.ckpt`)."""
    if not name.endswith(LIGHTNING_SUFFIX):
        return None
    for part in name[:-len(LIGHTNING_SUFFIX)].split("-"):
        if part.startswith("step=") and part[5:].isdigit() and part[5:].isascii():
            return int(part[5:])
    return None


def _is_lightning(entry: os.DirEntry) -> bool:
    return entry.name.endswith(LIGHTNING_SUFFIX) and entry.is_file(follow_symlinks=False)


def newest_valid(directory: Path, pattern: str | None = None) -> Checkpoint | None:
    valid = [c for c in find(directory, pattern) if c.valid]
    return valid[-1] if valid else None


def validate(path: Path) -> str:
    """'' when the checkpoint at `path` is complete, else why it is not."""
    if DS_PATTERN.match(path.name):
        return _validate_deepspeed_tag(path)
    if HF_PATTERN.match(path.name) or (path / "trainer_state.json").exists():
        return _validate_hf(path)
    return _validate_generic(path)


def _validate_generic(path: Path) -> str:
    """A checkpoint matched by a recipe's `pattern`: a file, or a folder of files."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files:
        return "empty directory"
    for file in files:
        problem = file_problem(file)
        if problem:
            return f"{file.relative_to(path) if path.is_dir() else file.name}: {problem}"
    return ""


def _validate_hf(path: Path) -> str:
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (the trainer writes it last: the save did not finish)"
    problem = _json_problem(state)
    if problem:
        return f"trainer_state.json {problem}"
    if not any((path / name).is_file() for name in WEIGHT_NAMES):
        return "no model or adapter weights"
    for file in sorted(path.iterdir()):
        problem = file_problem(file)
        if problem:
            return f"{file.name}: {problem}"
    for inner in sorted(path.glob("global_step*")):
        problem = _validate_deepspeed_dir(path, inner)
        if problem:
            return problem
    return ""


def _validate_deepspeed_tag(tag_dir: Path) -> str:
    return _validate_deepspeed_dir(tag_dir.parent, tag_dir, need_latest=False)


def _validate_deepspeed_dir(parent: Path, tag_dir: Path, need_latest: bool = True) -> str:
    latest = parent / "latest"
    if need_latest:
        if not latest.is_file():
            return "no DeepSpeed 'latest' file (rank 0 writes it after every shard)"
        tag = latest.read_text(errors="replace").strip()
        if not (parent / tag).is_dir():
            return f"DeepSpeed 'latest' names {tag!r}, which does not exist"
        if tag != tag_dir.name:
            return ""  # an older tag beside the one `latest` names: not the one resumed
    models = list(tag_dir.glob("*model_states.pt"))
    optims = list(tag_dir.glob("*optim_states.pt"))
    if not models:
        return f"{tag_dir.name}: no model_states file"
    if not optims:
        return f"{tag_dir.name}: no optimizer shards"
    for file in sorted(models + optims):
        problem = file_problem(file)
        if problem:
            return f"{tag_dir.name}/{file.name}: {problem}"
    return ""


def saved_world_size(tag_dir: Path) -> int | None:
    """Data-parallel ranks a DeepSpeed tag was saved with: one optimizer shard per rank."""
    shards = list(tag_dir.glob("*zero_pp_rank_*_optim_states.pt"))
    return len(shards) or None


def file_problem(file: Path) -> str:
    """'' when a checkpoint file looks whole from its header and size, else what is wrong."""
    if not file.is_file():
        return ""
    try:
        size = file.stat().st_size
        if size == 0:
            return "empty file"
        if file.suffix == ".safetensors":
            return _safetensors_problem(file, size)
        if file.suffix in (".pt", ".pth", ".bin", LIGHTNING_SUFFIX):  # .ckpt: Lightning's torch.save
            return _torch_zip_problem(file, size)
        if file.suffix == ".json":
            return _json_problem(file)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    return ""


def _safetensors_problem(file: Path, size: int) -> str:
    with open(file, "rb", buffering=0) as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "truncated before the header length"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8 or length > 100 * 2**20:
            return f"header length {length} does not fit a file of {size} bytes"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "header is not valid JSON"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"size {size} bytes, header promises {expected} (truncated write)"
    return ""


def _torch_zip_problem(file: Path, size: int) -> str:
    # Unbuffered: a buffered read of 2 bytes would pull 8 KiB. torch.save writes no
    # zip comment, so the end record is the last 22 bytes; search further only if not.
    with open(file, "rb", buffering=0) as handle:
        if handle.read(2) != b"PK":
            return ""  # a legacy pickle-format torch file: nothing cheap to check
        handle.seek(max(0, size - 22))
        if handle.read(4) == _ZIP_EOCD:
            return ""
        handle.seek(max(0, size - _EOCD_SEARCH))
        tail = handle.read()
    if _ZIP_EOCD not in tail:
        return "no zip end-of-central-directory record (truncated write)"
    return ""


def _json_problem(file: Path) -> str:
    try:
        json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError):
        return "is not valid JSON (truncated write)"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    return ""


@dataclass(frozen=True)
class Saved:
    """What a checkpoint's own files say about how it was saved."""

    train_batch_size: int | None = None  # trainer_state.json's micro-batch
    ds_tag: Path | None = None           # the DeepSpeed tag dir `latest` names
    world_size: int | None = None        # data-parallel ranks that tag was saved with
    universal: Path | None = None        # its finished universal conversion, if any
    scheduler: Path | None = None        # HF's scheduler.pt: it restores the saved learning rate
    model_only: bool = False             # an HF checkpoint without optimizer state (save_only_model)
    global_step: int | None = None       # trainer_state.json: the optimizer steps done
    max_steps: int | None = None         # trainer_state.json: the steps the run was set to do
    num_train_epochs: int | None = None  # trainer_state.json: the epochs it was set to do


#: HF Trainer's learning-rate scheduler and optimizer state inside checkpoint-N/.
SCHEDULER = "scheduler.pt"
OPTIMIZER_NAMES = ("optimizer.pt", "optimizer.bin")


def universal_dir(tag: Path) -> Path:
    """Where DeepSpeed's ds_to_universal writes the conversion of `tag`."""
    return tag.with_name(tag.name + "_universal")


def inspect(path: Path) -> Saved:
    """What a (valid) checkpoint's own small files say about how it was saved.

    A universal conversion counts once `latest_universal` names it: ds_to_universal
    writes that file last (deepspeed/checkpoint/ds_to_universal.py, main()).
    """
    state = path / "trainer_state.json"
    written = trainer_state(path)
    counts = ("train_batch_size", "global_step", "max_steps", "num_train_epochs")
    same: dict = {key: _whole(written.get(key)) for key in counts}
    same["scheduler"] = path / SCHEDULER if (path / SCHEDULER).is_file() else None
    tag = _deepspeed_tag(path)
    if tag is None:
        model_only = state.is_file() and not any((path / name).is_file() for name in OPTIMIZER_NAMES)
        return Saved(**same, model_only=model_only)
    universal = universal_dir(tag)
    marker = tag.parent / "latest_universal"
    done = marker.is_file() and marker.read_text(errors="replace").strip() == universal.name
    return Saved(**same, ds_tag=tag, world_size=saved_world_size(tag),
                 universal=universal if done and universal.is_dir() else None)


def trainer_state(path: Path) -> dict:
    """A checkpoint's trainer_state.json as a dict; {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _deepspeed_tag(path: Path) -> Path | None:
    """The DeepSpeed tag a checkpoint resumes: itself, or the one its `latest` names."""
    if DS_PATTERN.match(path.name):
        return path
    latest = path / "latest"
    if not latest.is_file():
        return None
    tag = path / latest.read_text(errors="replace").strip()
    return tag if tag.is_dir() else None


class QuarantineError(Exception):
    """A checkpoint could not be set aside.

    `refused`: the quarantine folder exists and is not this user's own folder (a symlink,
    not a directory, another owner): nothing may be moved there. Otherwise the checkpoint
    dir could not be written (read-only, no permission): the checkpoint stays in place.
    """

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def quarantine(path: Path, label: str, stamp: str) -> Path:
    """Set a checkpoint aside, never delete it: `<dir>/guardrun-quarantine/checkpoint-40.<label>-<stamp>`.

    A rename within one filesystem: atomic, and no byte of the user's data is copied.
    The checkpoint dir may be shared and sticky (anyone could plant `guardrun-quarantine`
    first), so the folder is made 0700 whatever the umask, opened with O_NOFOLLOW and
    checked to be this uid's directory before anything moves, and the rename goes through
    the two directory fds held since that check. Returns where it went; QuarantineError
    when it could not.
    """
    folder = path.parent / QUARANTINE
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise QuarantineError(f"cannot open {path.parent}: {err.strerror}", refused=False) from None
    try:
        inside = _own_folder(parent, folder)
        try:
            name = _free_name(inside, f"{path.name}.{label}-{stamp}")
            os.rename(path.name, name, src_dir_fd=parent, dst_dir_fd=inside)
        except OSError as err:
            raise QuarantineError(f"cannot move {path.name} into {folder}: {err.strerror}",
                                  refused=False) from None
        finally:
            os.close(inside)
    finally:
        os.close(parent)
    return folder / name


def _own_folder(parent: int, folder: Path) -> int:
    """An fd of `folder` (made 0700 if missing) once it is known to be this uid's directory."""
    created = True
    try:
        os.mkdir(QUARANTINE, 0o700, dir_fd=parent)
    except FileExistsError:
        created = False
    except OSError as err:
        raise QuarantineError(f"cannot create {folder}: {err.strerror}", refused=False) from None
    try:
        fd = os.open(QUARANTINE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as err:
        raise QuarantineError(_not_a_folder(parent, folder, err), refused=True) from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        os.close(fd)
        raise QuarantineError(f"{folder} is owned by uid {info.st_uid}, not by this user (uid "
                              f"{os.geteuid()}): guardrun moves no checkpoint into it; remove it "
                              f"or rename it", refused=True)
    if created:
        os.fchmod(fd, 0o700)  # mkdir's mode is masked by the umask
    return fd


def _not_a_folder(parent: int, folder: Path, err: OSError) -> str:
    """Why `folder` could not be opened as a directory, for the refusal message."""
    try:
        info = os.stat(QUARANTINE, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return f"cannot open {folder}: {err.strerror}"
    if stat.S_ISLNK(info.st_mode):
        return (f"{folder} is a symlink: guardrun does not follow it (someone may have planted "
                f"it); remove it, or rename it, and run again")
    if not stat.S_ISDIR(info.st_mode):
        return f"{folder} is not a directory: remove it, or rename it, and run again"
    return f"cannot open {folder}: {err.strerror}"


def _free_name(folder: int, base: str) -> str:
    """`base`, or `base-2`, `-3`, ...: the first name not taken in `folder`."""
    name, counter = base, 1
    while True:
        try:
            os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return name
        counter += 1
        name = f"{base}-{counter}"
