"""A host limit crossed while the job's tree compiles a torch extension says so (issue 12 §7).

Measured here: DeepSpeed's JIT build of deepspeed_shm_comm inside a 2-rank job's tree took
~3.9 GiB PSS for ~30 s (two cc1plus), against 1.1 GiB for the same run with the op built.
A limit set for the training run trips on the compile; "reached the limit" alone sends the
user to shrink a run that never started. The root cause names the extension instead.
"""
from __future__ import annotations

from helpers_extbuild import events, finish, start_compile_job

HINT = "compiling torch extension deepspeed_shm_comm: pre-build it or raise the limit"


def test_limit_crossed_during_an_extension_build_names_the_extension(tmp_path, state_dir):
    ext = tmp_path / "torch_extensions"
    guard, go = start_compile_job(tmp_path, ext)
    go.touch()
    out = finish(guard, tmp_path)
    assert guard.returncode == 1, out
    [ended] = events(state_dir, "attempt.ended")
    assert ended["kind"] == "host_oom", ended
    assert ended["root_cause"]["message"].startswith(HINT), ended["root_cause"]
    assert "reached the limit 200 MiB" in ended["root_cause"]["message"]
    assert f"guardrun:   {HINT}" in out, out
