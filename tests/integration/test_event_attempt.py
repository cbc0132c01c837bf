"""Every attempt event names its attempt (README, "What guardrun keeps": `job` and `attempt`
on each), read from the journal of a real two-attempt run: the first saves a checkpoint,
then grows past the memory limit and is stopped; the second resumes and finishes.
"""
from __future__ import annotations

import sys

from test_supervise import events, run_guardrun, write_recipe

from guardrun.supervisor.core import events as names

#: Facts of one attempt: from its plan to its end. Not in it: the run's own facts (state,
#: logging, the GPUs chosen before any attempt, the preflight that picks the rung), and the
#: checkpoint preparation, which comes before attempt.started (tests/unit/test_checkpointprep.py).
ATTEMPT_SCOPED = {
    names.ATTEMPT_STARTED, names.ATTEMPT_SPAWNED, names.ATTEMPT_SPAWN_FAILED, names.ATTEMPT_STOPPED,
    names.ATTEMPT_ENDED, names.OUTPUT_STILL_OPEN, names.LIMIT_BREACHED, names.DIAGNOSIS_STOP,
    names.HANG_DETECTED, names.STACKS_DUMPED, names.STACKS_SKIPPED, names.MEMORY_SAMPLE,
    names.CGROUP_ATTEMPT, names.CGROUP_FALLBACK, names.CGROUP_OOM_KILL, names.CGROUP_NOT_REMOVED,
    names.VRAM_PEAK, names.CHECKPOINT_SAVED, names.CHECKPOINT_INCOMPLETE,
    names.EXTENSION_LOCK_CLEARED, names.EXTENSION_LOCK_KEPT, names.TERMINAL_HUNG_UP,
    names.PROC_TERM_SENT, names.PROC_TERM_FORWARDED, names.PROC_KILL_SENT, names.PROC_SURVIVED_KILL,
}

SCRIPT = """\
import json, os, pathlib, time
def save(step):
    d = pathlib.Path('out') / f'checkpoint-{step}'
    d.mkdir(parents=True, exist_ok=True)
    (d / 'model.safetensors').write_bytes((2).to_bytes(8, 'little') + b'{}')
    (d / 'trainer_state.json').write_text(json.dumps({'global_step': step, 'max_steps': 4}))
if os.environ.get('SMALLER'):
    print('step 4/4', flush=True)
    save(4)
else:
    print('step 2/4', flush=True)
    save(2)
    time.sleep(1.0)  # the follower sees the save before the limit stops the attempt
    ballast = bytearray(64 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    time.sleep(60)
"""


def test_every_attempt_event_of_a_real_run_carries_its_attempt(tmp_path, state_dir):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        python: {sys.executable}
        script: {script}
        checkpoints: {{dir: ./out}}
        limits: {{host_memory: 40MiB, hard_memory: "off"}}
        monitor: {{interval: 0.1}}
        stop_grace: 2s
        restarts: {{max: 1, backoff: [0.1s, 0.2s]}}
        ladder: [{{on: [host_oom], env: {{SMALLER: "1"}}}}]
        """)
    result = run_guardrun(recipe, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    current, seen, wrong = None, set(), []
    for event in events(state_dir):
        name = names.name_of(event)
        if name == names.ATTEMPT_STARTED:
            current = event["attempt"]
        if name in ATTEMPT_SCOPED:
            seen.add(name)
            if event.get("attempt") != current:
                wrong.append(f"{name}: attempt {event.get('attempt')!r}, in attempt {current}")
    # the run did what the test is about: a save, a memory stop (its SIGTERM), two ends
    assert {names.CHECKPOINT_SAVED, names.LIMIT_BREACHED, names.MEMORY_SAMPLE, names.PROC_TERM_SENT,
            names.ATTEMPT_STOPPED, names.ATTEMPT_ENDED} <= seen, sorted(seen)
    assert current == 2, result.stdout
    assert not wrong, wrong
