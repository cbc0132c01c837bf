"""The tmux commands guardrun builds (the real server is tested in integration/test_tmux.py)."""
from __future__ import annotations

from guardrun.supervisor.unattended import tmux


def test_session_names_are_valid_tmux_targets():
    assert tmux.session_name("llava-lora") == "guardrun-llava-lora"
    assert tmux.session_name("qwen2.5:vl") == "guardrun-qwen2_5_vl"


def test_the_callers_environment_goes_along_but_not_its_terminal():
    args = tmux.passed_env({"PATH": "/opt/conda/bin", "TMUX": "/tmp/tmux-1/default,1,0",
                            "TERM": "xterm", "GUARDRUN_STATE_DIR": "/s"})
    assert args == ["-e", "GUARDRUN_STATE_DIR=/s", "-e", "PATH=/opt/conda/bin"]


def test_new_session_keeps_the_pane_after_the_run_in_the_same_invocation():
    argv = tmux.new_session_argv(["tmux", "-L", "t"], "guardrun-x", ["python", "-m", "g", "run", "x.yaml"],
                                 {"A": "1"}, "/work")
    assert argv[:6] == ["tmux", "-L", "t", "new-session", "-d", "-s"]
    dashdash = argv.index("--")
    assert argv[dashdash + 1:dashdash + 6] == ["python", "-m", "g", "run", "x.yaml"]
    assert argv[dashdash + 6:] == [";", "set-option", "-w", "-t", "=guardrun-x:", "remain-on-exit", "on"]
    assert ["-c", "/work"] == argv[argv.index("-c"):argv.index("-c") + 2]


def test_attach_from_a_terminal_switches_from_inside_tmux():
    assert tmux.attach_argv(["tmux"], "guardrun-x", False) == ["tmux", "attach-session", "-t", "=guardrun-x"]
    assert tmux.attach_argv(["tmux"], "guardrun-x", True) == ["tmux", "switch-client", "-t", "=guardrun-x"]
    assert tmux.base_argv(None) == ["tmux"] and tmux.base_argv("s") == ["tmux", "-L", "s"]
