"""The systemd units pass `systemd-analyze verify`, and a real `guardrun run` speaks sd_notify.

There is no running systemd here. `systemd-analyze verify` still loads a unit file
offline, with quirks found by trying (systemd 252):
- unknown keys and unparsable values are *warnings*: exit 0, text on stderr. So the test
  requires empty output, not only exit 0.
- ExecStart's binary must exist ("Command ... is not executable" is an error), so the
  test verifies a copy whose ExecStart points at this venv's guardrun.
- a template (`name@.service`) is verified as the instance `name@i.service`.
- `--user` needs XDG_RUNTIME_DIR ("Failed to initialize manager: No such device or
  address" without it); a private temp dir is enough. `--man=no` skips the man-page
  lookup of Documentation=, `--generators=no` the generators.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import uuid

import pytest

from conftest import REPO
from helpers_unattended import GUARDRUN, gate_recipe, output_log

UNITS = {"system": REPO / "systemd" / "guardrun@.service",
         "user": REPO / "systemd" / "user" / "guardrun@.service"}


def keys(unit_text: str) -> dict[str, str]:
    """`Key=value` lines of a unit (the last one wins, as for systemd's single-value keys)."""
    found = {}
    for line in unit_text.splitlines():
        match = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_unit_file_passes_systemd_analyze_verify(kind, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNITS[kind].read_text()
    copy = tmp_path / "guardrun@.service"
    copy.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={GUARDRUN}", text, flags=re.M))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    argv = ["systemd-analyze", *(["--user"] if kind == "user" else []), "verify",
            "--man=no", "--generators=no", str(copy)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == "", "verify warned: " + result.stderr


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_unit_settings_match_guardrun_exit_codes_and_grace(kind):
    unit = keys(UNITS[kind].read_text())
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
    assert unit["KillMode"] == "mixed" and unit["Restart"] == "on-failure"
    assert unit["RestartSec"] == "30s" and "WatchdogSec" in unit
    # 1 (gave up) and 2 (bad recipe) would fail the same way again; 130 is a requested stop.
    assert unit["RestartPreventExitStatus"].split() == ["1", "2"]
    assert unit["SuccessExitStatus"] == "130"
    minutes = int(re.fullmatch(r"(\d+)min", unit["TimeoutStopSec"]).group(1))
    assert minutes * 60 > 30 + 5 + 10, "stop_grace default + kill check + output drain"
    recipe = "/etc/guardrun/%i.yaml" if kind == "system" else "%E/guardrun/%i.yaml"
    assert unit["ExecStart"].endswith(f"guardrun run --quiet {recipe}")


def _datagrams(sock: socket.socket, until: str, timeout: float) -> list[str]:
    """Messages received until one contains `until` (the socket's timeout bounds each wait)."""
    sock.settimeout(timeout)
    messages = []
    while not messages or until not in messages[-1]:
        messages.append(sock.recv(4096).decode())
    return messages


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_status_watchdog_stopping(abstract, tmp_path, state_dir, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"guardrun-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        sock.bind(str(tmp_path / "notify.sock"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # a ping at least every 0.1 s
    recipe, go = gate_recipe(tmp_path, extra_args=["--show-env", "NOTIFY_SOCKET",
                                                   "--show-env", "WATCHDOG_USEC"])
    run = subprocess.Popen([GUARDRUN, "run", str(recipe)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        before = _datagrams(sock, "READY=1", timeout=30)
        pings = _datagrams(sock, "WATCHDOG=1", timeout=5)
        go.touch()
        after = _datagrams(sock, "STOPPING=1", timeout=30)
        out, _ = run.communicate(timeout=30)
    finally:
        go.touch()
        run.wait(timeout=30)
        sock.close()
    assert run.returncode == 0, out
    assert before[-1] == "READY=1"
    statuses = [m for m in pings + after if m.startswith("STATUS=")]
    assert any(m.startswith("STATUS=attempt 1 · rung 0 · 1 rank(s)") for m in statuses), statuses
    assert any("WATCHDOG=1" == m for m in pings)
    assert after[-1].splitlines() == ["STOPPING=1", "STATUS=guardrun exits 0: finished"]
    assert "env NOTIFY_SOCKET: unset" in output_log(state_dir)
    assert "env WATCHDOG_USEC: unset" in output_log(state_dir)
