"""The preflight: which rung the job starts on, given what is free, and what the user reads."""
from __future__ import annotations

import io
import json
import os
import sys

from guardrun.launcher.failures import Failure, Kind
from guardrun.launcher.ladder import walk
from guardrun.launcher.modelinfo import resolve
from guardrun.launcher.spec import Model
from guardrun.launcher.preflight import Known, Resources, check, decide_fitting, gather, predict, workload, zero_settings
from guardrun.launcher.units import GIB
from guardrun.supervisor.watch import proc
from guardrun.supervisor.core.clock import MonotonicClock
from guardrun.supervisor.core.context import Context
from guardrun.supervisor.record.console import Console
from guardrun.supervisor.watch.fitcheck import measure, preflight_plan
from guardrun.supervisor.record.journal import Journal
from guardrun.supervisor.run.loop import Supervisor

sys.path.insert(0, os.path.dirname(__file__) + "/..")
from fakes import FakeClock, FakeGpuSource, ScriptedMemory  # noqa: E402
from recipes_util import make_recipe  # noqa: E402

# FIELD_NOTES situation 4: LLaVA-v1.5-7B full fine-tune on 8 RTX 3090 (24 GB).
SITUATION_4 = """
launcher: torchrun
script: train.py
gpus: 8
batch: {per_device: 16, grad_accum: 1}
model: {params: 7.06e9, vision_params: 3.03e8, trainable: full, seq_len: 2048,
        gradient_checkpointing: true, zero_stage: 2}
ladder:
  - {on: [cuda_oom], batch: halve}
  - {on: [cuda_oom], zero_stage: 3, args: {zero_config: zero3.json}}
  - {on: [cuda_oom], zero3_offload: true, args: {zero_config: zero3_offload.json}}
  - {on: [host_oom], gpus: 4}
"""
# No `deepspeed:` file here: each ZeRO rung names its config in `args:`, or it would launch the
# same job as the rung before and be skipped (issue 13 §2).
PLENTY = 2000 * GIB


def gpus(free: int, count: int = 8) -> dict[int, int]:
    return {index: free for index in range(count)}


def test_situation_4_starts_at_offload_with_batch_8_and_accumulation_2(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4)
    choice = decide_fitting(recipe, [], gather(recipe), Resources(gpus(24 * GIB), PLENTY))
    plan = choice.decision.plan
    # the fix the XTuner users found by crashing first: offload, batch 16 -> 8, accumulation 1 -> 2
    assert plan.rungs == (1, 2, 3)
    assert (plan.per_device, plan.grad_accum, plan.global_batch, plan.zero3_offload) == (8, 2, 128, True)
    assert [p.rung for p, _ in choice.skipped] == [0, 1, 2]
    assert all(f.kind is Kind.CUDA_OOM for _, f in choice.skipped)
    assert "per GPU > 21.6 GiB usable of 24.0 GiB free on GPU 0" in choice.skipped[0][1].reason
    assert choice.fit.fits and not choice.none_fits


def test_on_80gb_gpus_the_recipe_starts_as_written(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4)
    choice = decide_fitting(recipe, [], gather(recipe), Resources(gpus(80 * GIB), PLENTY))
    assert choice.decision.plan.rungs == () and choice.skipped == ()


def test_short_host_memory_takes_the_host_oom_rungs(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4)
    # ZeRO-2 loads a whole bf16 copy per rank: 8 x 14 GB x 1.5 + runtime > 120 GiB
    choice = decide_fitting(recipe, [], gather(recipe), Resources(gpus(80 * GIB), 120 * GIB))
    assert choice.decision.plan.ranks == 4
    assert choice.skipped[0][1].kind is Kind.HOST_OOM
    assert "of host memory >" in choice.skipped[0][1].reason


def test_nothing_known_nothing_skipped(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4)
    assert decide_fitting(recipe, [], gather(recipe), Resources(None, None)).decision.plan.rungs == ()
    bare = make_recipe(tmp_path, "launcher: torchrun\nscript: train.py\ngpus: 8\n", name="bare.yaml")
    assert check(walk(bare)[0], predict(bare, walk(bare)[0], gather(bare)),
                 Resources(gpus(1 * GIB), 1 * GIB)).fits


def test_preflight_off_launches_the_recipe_as_written(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4 + "preflight: off\n")
    assert recipe.preflight is False
    assert decide_fitting(recipe, [], gather(recipe), Resources(gpus(1 * GIB), PLENTY)).decision.plan.rungs == ()


def test_when_nothing_fits_the_lightest_rung_runs_anyway(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4)
    choice = decide_fitting(recipe, [], gather(recipe), Resources(gpus(2 * GIB), PLENTY))
    assert choice.none_fits and choice.decision.plan.rungs == (1, 2, 3)
    assert not choice.fit.fits


def test_after_a_real_failure_the_next_rung_is_checked_too(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4)
    history = [Failure(Kind.CUDA_OOM, attempt=1)]
    choice = decide_fitting(recipe, history, gather(recipe), Resources(gpus(24 * GIB), PLENTY))
    assert choice.decision.plan.rungs == (1, 2, 3)
    assert [p.rungs for p, _ in choice.skipped] == [(1,), (1, 2)]


def test_zero_settings_come_from_the_deepspeed_file_then_the_rung(tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu"}}}))
    recipe = make_recipe(tmp_path, SITUATION_4.replace("zero_stage: 2}", "zero_stage: 1}")
                         + "deepspeed: {config: ds.json}\n")
    known = gather(recipe)
    plans = walk(recipe)
    assert zero_settings(recipe, plans[0], known) == (3, True, False)   # the file wins over the hint
    assert zero_settings(recipe, plans[3], known) == (3, True, True)    # zero3_offload: both
    assert zero_settings(recipe, plans[0], Known(known.info)) == (1, False, False)  # file unreadable: hint


def test_gradient_checkpointing_is_read_from_the_args(tmp_path):
    body = "launcher: torchrun\nscript: train.py\nmodel: {params: 7e9}\n"
    mapping = make_recipe(tmp_path, body + "args: {gradient_checkpointing: true}\n")
    listed = make_recipe(tmp_path, body + "args: [--gradient_checkpointing, 'True', --bf16]\n", name="l.yaml")
    inline = make_recipe(tmp_path, body + "args: ['--gradient_checkpointing=False']\n", name="i.yaml")
    nothing = make_recipe(tmp_path, body, name="n.yaml")
    assert [workload(r, walk(r)[0], gather(r)).gradient_checkpointing
            for r in (mapping, listed, inline, nothing)] == [True, True, False, False]


def test_model_shape_from_a_local_folder_and_the_hf_cache(tmp_path):
    folder = tmp_path / "vicuna"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "vocab_size": 32000}))
    (folder / "pytorch_model-00001-of-00003.bin").write_bytes(b"\0" * 1000)
    (folder / "model-00001.safetensors").write_bytes(b"\0" * 5000)  # mmapped, shared: not counted
    local = resolve(Model(path="vicuna", vision_params=3.04e8), tmp_path)
    assert local.shape.total == 13_015_449_600 + 304_000_000 and local.shard_bytes == 1000
    snapshot = tmp_path / "hub" / "models--lmsys--vicuna-13b-v1.5" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((folder / "config.json").read_text())
    cached = resolve(Model(path="lmsys/vicuna-13b-v1.5"), tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert cached.shape.layers == 40 and str(snapshot) in cached.note
    missing = resolve(Model(path="lmsys/other", params=7e9), tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert missing.shape.total == 7_000_000_000
    assert missing.note == "config.json of lmsys/other not found here; model.params 7e+09"
    assert resolve(Model(path="lmsys/other"), tmp_path, env={}).note.endswith("memory not estimated")


def test_the_loop_says_which_rungs_it_skips(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4)
    said, events = [], []
    source = FakeGpuSource(count=8, total=24 * GIB)
    memory = ScriptedMemory(total=PLENTY, readings=[(0, 0, PLENTY)])
    ctx = Context(FakeClock(), lambda event, **fields: events.append((event, fields)), said.append)
    plan = preflight_plan(recipe, [], None, walk(recipe)[0], source, memory, ctx)
    assert plan.rungs == (1, 2, 3)
    assert said[0].startswith("skipping rung 0: predicted ") and "per GPU > 21.6 GiB usable" in said[0]
    assert [line.split(":")[0] for line in said] == ["skipping rung 0", "skipping rung 1", "skipping rung 2"]
    assert [e for e, _ in events] == ["preflight.skipped"] * 3 + ["preflight.fits"]
    assert events[0][1]["kind"] == "cuda_oom" and events[-1][1]["rung"] == 3


def test_measure_reads_nvml_meminfo_and_the_limit(tmp_path):
    recipe = make_recipe(tmp_path, SITUATION_4 + "limits: {host_memory: 50%}\n")
    memory = ScriptedMemory(total=100 * GIB, readings=[(0, 0, 80 * GIB)])
    resources = measure(recipe, FakeGpuSource(count=2, total=24 * GIB, used=lambda i: i * GIB), memory)
    assert resources == Resources({0: 24 * GIB, 1: 23 * GIB}, 80 * GIB, 50 * GIB)
    failing = FakeGpuSource()
    failing.fail = "GPU fell off the bus"
    assert measure(recipe, failing, None) == Resources(None, None, None)


def test_the_supervisor_starts_on_the_first_rung_that_fits(tmp_path, state_dir, monkeypatch):
    """The loop's wiring: a real (tiny) job, a fake 24 GB GPU; rungs 0-2 are skipped with a
    console line and a journal event each, and the job runs with rung 3's arguments."""
    monkeypatch.setattr(proc, "set_child_subreaper", lambda: None)  # pytest must not adopt
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "job.py").write_text("import sys; print('args', ' '.join(sys.argv[1:]))\n")
    body = SITUATION_4.replace("launcher: torchrun", "launcher: python").replace("script: train.py", "script: job.py")
    recipe = make_recipe(tmp_path, body.replace("gpus: 8", "gpus: 1"), script="unused.py")
    out = io.StringIO()
    journal = Journal(recipe.name)
    source = FakeGpuSource(count=1, total=24 * GIB)
    memory = ScriptedMemory(total=PLENTY, readings=[(1 << 20, 1 << 20, PLENTY)])  # a 2 TiB host
    code = Supervisor(recipe, journal, Console(out, tty=False, plain_every=0), MonotonicClock(),
                      memory=memory, gpus=source).run()
    journal.close()
    text = out.getvalue()
    assert code == 0, text
    assert "skipping rung 0: predicted " in text and "per GPU > 21.6 GiB usable of 24.0 GiB free on GPU 0" in text
    # one rank: ZeRO partitions nothing, only offload (rung 3, batch 8 x 2 after rung 1) fits
    assert "attempt 1: rung 3, 1 rank(s), micro-batch 8 × accumulation 2 × 1 = global 16" in text
    assert "--per_device_train_batch_size 8 --gradient_accumulation_steps 2" in text
    events = [json.loads(line) for line in (journal.dir / "events.jsonl").read_text().splitlines()]
    skipped = [e for e in events if e["event"] == "guardrun.preflight.skipped"]
    assert [e["rung"] for e in skipped] == [0, 1, 2] and skipped[0]["kind"] == "cuda_oom"
