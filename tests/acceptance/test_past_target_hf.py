"""Acceptance: a real 2-rank HF Trainer run under torchrun that trains to max_steps and then loses a
rank in teardown is finished, never relaunched past its target (issue 13 §1), and a rerun of the
finished recipe launches nothing (§7). Judged from the trainer's trainer_state.json."""
from __future__ import annotations

import pytest

from test_hf_trainer import TRAINER, final_state, journal, logged_steps, recipe, run

pytestmark = pytest.mark.slow


def test_hf_run_whose_rank_aborts_after_the_last_step_is_not_relaunched(tmp_path, state_dir):
    path = recipe(tmp_path, f"""
        launcher: torchrun
        script: {TRAINER}
        gpus: 2
        args: {{output_dir: ./out, use_cpu: true, max_steps: 6, save_steps: 3, logging_steps: 1,
                report_to: none, num_samples: 64, abort_in_teardown_rank: 1}}
        batch: {{per_device: 2, grad_accum: 1}}
        checkpoints: {{dir: ./out}}
        monitor: {{interval: 0.25}}
        stop_grace: 10s
        restarts: {{max: 2, backoff: [0.1s, 0.2s]}}
        """)
    result = run(path, timeout=600)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-4000:]
    [ended] = journal(state_dir, "attempt.ended")
    assert (ended["kind"], ended["exit_code"], ended["reached_target"]) == ("success", 1, "step 6/6")
    assert ("warning: the job reached its target (step 6/6), then exited with code 1 in teardown: "
            "not relaunched") in said
    state = final_state(tmp_path / "out", 6)
    assert (state["global_step"], state["max_steps"]) == (6, 6) and logged_steps(state) == list(range(1, 7))
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]

    again = run(path, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already finished at step 6 (run 1); use --fresh to start over" in again.stdout
    assert len(journal(state_dir, "attempt.started")) == 1
