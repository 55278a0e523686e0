"""The shipped systemd unit, polkit rule and sysusers config, checked by systemd's own tools.

Needs Debian's `systemd` package (systemd-analyze, systemd-sysusers) and `nodejs` for the polkit
rule; the tests skip, saying which package is missing, only when the binary is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amora.systemd import UNIT_NAME, packaged_file, render_unit

POLKIT_RULE = ("polkit", "50-amora-agent-reboot.rules")
SYSUSERS = ("sysusers", "amora-agent.conf")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/bin/{name}") if Path(p).exists()), None
    )
    if path is None:
        pytest.skip(f"{name} not installed (Debian package: {package})")
    return path


def _existing_executable() -> str:
    # verify refuses an ExecStart= binary that does not exist; the venv's entry point does.
    candidate = Path(sys.executable).parent / "amora-agent"
    return str(candidate) if candidate.exists() else "/bin/true"


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    analyze = _tool("systemd-analyze", "systemd")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(exist_ok=True)
    unit = unit_dir / UNIT_NAME
    unit.write_text(text)
    return subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0"},
    )


def _complaints(result: subprocess.CompletedProcess[str]) -> list[str]:
    # Other units on the host may have their own warnings; only ours matter.
    return [line for line in (result.stdout + result.stderr).splitlines() if "amora" in line]


def test_packaged_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(
        tmp_path, render_unit(exec_start=f"{_existing_executable()} --config /etc/amora/config.json")
    )
    assert result.returncode == 0, result.stderr
    assert _complaints(result) == []


def test_verify_really_checks_the_unit(tmp_path: Path) -> None:
    """Guard against a verify that accepts anything: a missing binary and a typo are caught."""
    result = _verify(tmp_path, render_unit(exec_start="/nonexistent/amora-agent"))
    assert result.returncode != 0
    assert any("/nonexistent/amora-agent" in line for line in _complaints(result))
    result = _verify(
        tmp_path, render_unit(exec_start=_existing_executable()).replace("Type=notify", "Type=notifyy")
    )
    assert any("notifyy" in line for line in _complaints(result))


def test_unit_for_a_music_folder_under_home_passes_verify(tmp_path: Path) -> None:
    text = render_unit(exec_start=_existing_executable(), music_dir="/home/user/music")
    settings = _settings(text)
    assert settings["ProtectHome"] == ["read-only"]
    assert settings["ReadWritePaths"] == ["/home/user/music"]
    result = _verify(tmp_path, text)
    assert result.returncode == 0, result.stderr
    assert _complaints(result) == []


def test_unit_settings() -> None:
    s = _settings(packaged_file(UNIT_NAME).read_text())
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecStart": ["/usr/bin/amora-agent --config /etc/amora/config.json"],
        "WatchdogSec": ["30"],
        "Restart": ["on-failure"],
        "TimeoutStopSec": ["10"],
        "User": ["amora"],
        "Group": ["amora"],
        "SupplementaryGroups": ["audio"],
        "StateDirectory": ["amora amora/music"],
        "ReadWritePaths": ["/var/lib/amora/music"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "PrivateDevices": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "CapabilityBoundingSet": [""],
        "MemoryDenyWriteExecute": ["yes"],
        "SystemCallArchitectures": ["native"],
        "WantedBy": ["multi-user.target"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, key
    assert "RestartSec" in s


def test_exposure_score(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit(exec_start=_existing_executable()))
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0  # systemd rates <= 2.0 as "OK"


def test_sysusers_config(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers", "systemd")
    result = subprocess.run(
        [sysusers, "--dry-run", f"--root={tmp_path}", str(packaged_file(*SYSUSERS))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Creating user 'amora'" in result.stdout + result.stderr


_POLKIT_HARNESS = """
const fs = require("fs");
const rules = [];
const polkit = {
  Result: { YES: "yes", NO: "no", NOT_HANDLED: null },
  addRule: (f) => rules.push(f),
};
new Function("polkit", fs.readFileSync(process.argv[1], "utf8"))(polkit);
const cases = JSON.parse(process.argv[2]);
const out = cases.map(([action, user]) => {
  for (const rule of rules) {
    const r = rule({ id: action }, { user: user });
    if (r !== null && r !== undefined) return r;
  }
  return null;
});
process.stdout.write(JSON.stringify(out));
"""


def test_polkit_rule_grants_reboot_to_amora_only() -> None:
    """Runs the rule's JavaScript (polkitd evaluates it the same way) against sample requests."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node not installed (Debian package: nodejs)")
    cases = [
        ("org.freedesktop.login1.reboot", "amora"),
        ("org.freedesktop.login1.reboot-multiple-sessions", "amora"),
        ("org.freedesktop.login1.reboot-ignore-inhibit", "amora"),
        ("org.freedesktop.login1.power-off", "amora"),
        ("org.freedesktop.systemd1.manage-units", "amora"),
        ("org.freedesktop.login1.reboot", "mallory"),
    ]
    result = subprocess.run(
        [node, "-e", _POLKIT_HARNESS, str(packaged_file(*POLKIT_RULE)), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == ["yes", "yes", None, None, None, None]


def test_render_unit_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        render_unit(exec_start="/usr/bin/amora-agent\nUser=root")
