"""A torch-extension build killed mid-compile must not hang the relaunch on its lock."""
from __future__ import annotations

import os
import time

from test_supervise import JOBS, events, named, run_guardrun, write_recipe


def test_relaunch_is_not_blocked_by_the_lock_a_killed_build_left(tmp_path, state_dir):
    ext = tmp_path / "torch_extensions"
    older = ext / "py311_cpu" / "someone_elses_op" / "lock"
    older.parent.mkdir(parents=True)
    older.touch()
    hour_ago = time.time() - 3600
    os.utime(older, (hour_ago, hour_ago))
    recipe = write_recipe(tmp_path, f"""
        launcher: python
        script: {JOBS / 'ext_build.py'}
        env: {{TORCH_EXTENSIONS_DIR: "{ext}", EXT_BUILD_DONE_MARK: "{tmp_path / 'built'}"}}
        restarts: {{max: 1, backoff: [0.1s, 0.1s]}}
        ladder: [{{on: [host_oom], env: {{RELAUNCHED: "1"}}}}]   # a SIGKILL reads as the OOM killer
        """)
    result = run_guardrun(recipe)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "built without waiting" in result.stdout
    [cleared] = named(events(state_dir), "extension_lock.cleared")
    assert cleared["attempt"] == 1
    assert cleared["path"] == str(ext / "py311_cpu" / "deepspeed_shm_comm" / "lock")
    assert older.exists(), "a lock older than the attempt is not ours to remove"
