"""Ranks an attempt really ran, read from its output, and what the ladder does with it (issue 13 §6)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from guardrun.launcher.command import build
from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.ladder import decide
from guardrun.supervisor.record.journalread import history
from guardrun.supervisor.diagnose.rankcount import ranks_in_file, ranks_seen

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from recipes_util import make_recipe  # noqa: E402

OUTPUTS = Path(__file__).resolve().parents[1] / "data" / "outputs"


@pytest.mark.parametrize("name, ranks", [
    ("real_llamafactory_undefined_dataset_torchrun.txt", 2),  # "Process rank: 0, world size: 2"
    ("real_deepspeed_zero3_ok.txt", 2),     # HF Trainer: total 16 = 8 per device × 1 accumulation × 2
    ("real_hf_trainer_ok.txt", 1),          # total 8 = 8 × 1 × 1
    ("real_torchrun_dist_modnotfound.txt", 2),  # [rank1]: prefixes
    ("real_python_syntax_error.txt", None),
])
def test_ranks_seen_in_real_outputs(name, ranks):
    assert ranks_in_file(OUTPUTS / name) == ranks


def test_ranks_seen_lines():
    assert ranks_seen(["WORLD_SIZE=4 LOCAL_RANK=0", "world_size: 2"]) == 4
    assert ranks_seen(["[default3]: step 1"]) == 4
    assert ranks_seen(["Total train batch size (w. parallel, distributed & accumulation) = 12",
                       "Instantaneous batch size per device = 2", "Gradient Accumulation steps = 3"]) == 2
    assert ranks_seen(["step 1 loss 0.5"]) is None
    assert ranks_in_file(Path("/nonexistent/output.log")) is None


TOOL = """
launcher: command
command: [llamafactory-cli, train, cfg.yaml]
args_style: key=value
ranks_env: NPROC_PER_NODE
gpus: 4
"""


def test_a_tool_that_ignores_the_rank_count_gets_no_more_gpus_rungs(tmp_path):
    (tmp_path / "cfg.yaml").write_text("dataloader_num_workers: 4\n")
    recipe = make_recipe(tmp_path, TOOL)
    asked = decide(recipe, [Failure(Kind.HOST_OOM, attempt=1, ranks_seen=4)]).plan
    assert dict(build(recipe, asked).env)["NPROC_PER_NODE"] == "3"
    # attempt 2 was asked for 3 ranks and its output still showed 4
    history_ = [Failure(Kind.HOST_OOM, attempt=1, ranks_seen=4), Failure(Kind.HOST_OOM, attempt=2, ranks_seen=4)]
    plan = decide(recipe, history_).plan
    assert (plan.ranks, plan.rungs, plan.skipped, plan.dataloader_workers) == (4, (1, 4), (2, 3), 0)
    assert dict(build(recipe, plan).env)["NPROC_PER_NODE"] == "4"
    assert build(recipe, plan).argv[3:] == ("dataloader_num_workers=0",)
    assert ("attempt 2 ran 4 rank(s) when asked for 3: the tool ignores the rank count; back to 4 rank(s), "
            "gpus rungs change nothing") in plan.notes
    assert "skipped: rung 2 (gpus 2) changes only the rank count" in plan.notes
    # nothing else left for host memory: give up, saying why
    gave_up = decide(recipe, history_ + [Failure(Kind.HOST_OOM, attempt=3, ranks_seen=4)])
    assert gave_up.plan is None and gave_up.give_up == (
        "no rung left that changes anything for host_oom: attempt 2 ran 4 rank(s) when asked for 3: the tool "
        "ignores the rank count")


def test_the_journal_keeps_the_ranks_seen(tmp_path):
    lines = [{"event": "guardrun.run.started", "digest": "d"},
             {"event": "guardrun.attempt.ended", "attempt": 1, "kind": "host_oom", "ranks_seen": 4},
             {"event": "guardrun.attempt.ended", "attempt": 2, "kind": "host_oom", "ranks_seen": "x"},
             {"event": "guardrun.attempt.ended", "attempt": 3, "kind": "host_oom"}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [f.ranks_seen for f in history(tmp_path, "d")] == [4, None, None]


@pytest.mark.parametrize("seen, ignored_at", [
    ((2, 2), 2),      # the tool runs 2 ranks whatever it is told: attempt 2 (asked 3) shows it
    ((4, 3), None),   # it followed NPROC_PER_NODE: the gpus rungs keep going
    ((None, None), None),  # no rank count in the output: nothing to judge from
    ((4, 4), 2),      # asked 3, ran 4
])
def test_ranks_ignored_when_fewer_were_asked_and_the_output_shows_no_fewer(tmp_path, seen, ignored_at):
    (tmp_path / "cfg.yaml").write_text("dataloader_num_workers: 4\n")
    recipe = make_recipe(tmp_path, TOOL)
    failures = [Failure(Kind.HOST_OOM, attempt=n + 1, ranks_seen=s) for n, s in enumerate(seen)]
    plan = decide(recipe, failures).plan
    notes = [n for n in plan.notes if "the tool ignores the rank count;" in n]
    if ignored_at is None:
        assert (plan.ranks, notes) == (2, [])
    else:
        assert plan.ranks == 4 and notes[0].startswith(f"attempt {ignored_at} ran {seen[1]} rank(s) when asked for 3")
