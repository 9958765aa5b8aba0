"""scripts/install.sh and uninstall.sh in a throwaway root, and the unit checked by systemd's own tools."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from installed import RUNTIME_LOCK, check_modules, daemon_comes_online, outside_env

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install.sh"
UNINSTALL = REPO / "scripts" / "uninstall.sh"
UNIT = REPO / "systemd" / "lockerd.service"
DISPLAY_UNIT = REPO / "systemd" / "lockerd-display.service"
RULES = REPO / "systemd" / "99-lockerd.rules"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def run(*cmd: str | Path, ok: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=outside_env())
    if ok:
        assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.fixture
def root(tmp_path) -> Path:
    """A root file system with the OS parts systemd-analyze needs and a stand-in venv.

    The stand-in's bin/lockerd runs this checkout's real CLI, so the
    install's check-config step is the real one; only pip is skipped.
    """
    r = tmp_path / "root"
    (r / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", r / "usr/lib/systemd/system", symlinks=True)
    (r / "bin").mkdir()
    shutil.copy2("/bin/kill", r / "bin/kill")  # ExecReload's command must exist in the root
    venv_bin = r / "opt/lockerd/venv/bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "lockerd").write_text(f'#!/bin/sh\nexec {sys.executable} -m lockerd "$@"\n')
    (venv_bin / "lockerd").chmod(0o755)
    return r


def install(root: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    return run(INSTALL, "--root", root, "--skip-pip", *extra, ok=ok)


def test_install_lands_every_file_with_its_mode(root):
    r = install(root)
    unit = root / "etc/systemd/system/lockerd.service"
    rules = root / "etc/udev/rules.d/99-lockerd.rules"
    conf = root / "etc/lockerd/lockerd.toml"
    assert unit.read_text() == UNIT.read_text() and mode(unit) == 0o644
    assert rules.read_text() == RULES.read_text() and mode(rules) == 0o644
    assert mode(conf) == 0o644 and mode(conf.parent) == 0o755
    assert (root / "opt/lockerd/docs/install.md").is_file()
    wants = root / "etc/systemd/system/multi-user.target.wants/lockerd.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/lockerd.service"
    # The config check ran for real against the copied config.
    assert f"{conf}: OK" in r.stdout
    # Nothing on the live system was touched: those commands were only printed.
    for cmd in ("systemctl daemon-reload", "udevadm control --reload-rules", "systemctl restart lockerd.service",
                "groupadd --system gpio"):
        assert f"not run) {cmd}" in r.stdout


def test_installed_config_keeps_its_files_in_the_service_directories(root):
    install(root)
    text = (root / "etc/lockerd/lockerd.toml").read_text()
    assert 'control_socket = "/run/lockerd/lockerd.sock"' in text
    assert 'path = "/var/lib/lockerd/journal.db"' in text
    # ProtectSystem=strict makes /etc read-only to the service: nothing may point there.
    assert "../" not in text


def test_install_is_idempotent_and_keeps_an_edited_config(root):
    install(root)
    conf = root / "etc/lockerd/lockerd.toml"
    edited = conf.read_text().replace('node = "locker-1"', 'node = "locker-7"')
    assert edited != conf.read_text()
    conf.write_text(edited)
    r = install(root)
    assert "keeping the existing /etc/lockerd/lockerd.toml" in r.stdout
    assert conf.read_text() == edited
    assert "node locker-7" in r.stdout  # check-config ran on the station's own config
    assert (root / "etc/systemd/system/lockerd.service").read_text() == UNIT.read_text()


def test_install_stops_on_a_bad_config(root):
    conf = root / "etc/lockerd/lockerd.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text("[controller]\nsite = 5\n")
    r = install(root, ok=False)
    assert r.returncode == 1
    assert "fix /etc/lockerd/lockerd.toml" in r.stderr
    assert "not run) systemctl restart" not in r.stdout


@pytest.mark.slow
def test_install_with_pip_builds_a_venv_of_its_own_that_runs_a_station_daemon(root, tmp_path, mosquitto, recorders):
    # The real pip step: a fresh venv (no host packages), the locked versions, the package from a clean copy.
    shutil.rmtree(root / "opt/lockerd/venv")
    r = run(INSTALL, "--root", root, "--no-start", timeout=300)
    assert "installing lockerd and the locked versions" in r.stdout
    venv_dir = root / "opt/lockerd/venv"
    assert "include-system-site-packages = false" in (venv_dir / "pyvenv.cfg").read_text()
    python = venv_dir / "bin/python"
    # Names compared as pip normalises them: prometheus-client is frozen as prometheus_client.
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                            check=True).stdout.lower().replace("_", "-").split()
    # Every pin of the lock that applies here (lgpio's marker limits it to a Pi).
    locked = [line.split(" ")[0].lower().replace("_", "-") for line in RUNTIME_LOCK.read_text().splitlines()
              if "==" in line and ";" not in line]
    assert [p for p in locked if p not in frozen] == [], "the venv does not hold the locked versions"
    where = check_modules(python, tmp_path)
    assert where.is_relative_to(venv_dir)
    daemon_comes_online(venv_dir / "bin/lockerd", tmp_path / "station", mosquitto, recorders)


def test_install_refuses_without_a_venv_when_skipping_pip(tmp_path):
    r = run(INSTALL, "--root", tmp_path, "--skip-pip", ok=False)
    assert r.returncode == 1 and "bin/lockerd is missing" in r.stderr


def test_unknown_option_is_an_error_and_help_explains(tmp_path):
    r = run(INSTALL, "--frobnicate", ok=False)
    assert r.returncode == 2 and "unknown option --frobnicate" in r.stderr
    r = run(INSTALL, "--help")
    assert "--root DIR" in r.stdout and "--skip-pip" in r.stdout
    r = run(UNINSTALL, "--help")
    assert "--purge" in r.stdout


def test_systemd_analyze_verify_passes_on_the_installed_unit(root):
    install(root)
    r = run(SYSTEMD_ANALYZE, "verify", f"--root={root}", "lockerd.service", ok=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_verify_would_catch_a_missing_executable(root):
    # Proves the verify test above checks something: without the venv the unit is refused.
    install(root)
    (root / "opt/lockerd/venv/bin/lockerd").unlink()
    r = run(SYSTEMD_ANALYZE, "verify", f"--root={root}", "lockerd.service", ok=False)
    assert r.returncode != 0 and "/opt/lockerd/venv/bin/lockerd" in r.stderr


def exposure(root: Path) -> float:
    r = run(SYSTEMD_ANALYZE, "security", "--offline=yes", f"--root={root}", "--no-pager", "lockerd.service")
    m = re.search(r"Overall exposure level for lockerd\.service: (\d+(?:\.\d+)?)", r.stdout)
    assert m, r.stdout[-500:]
    return float(m.group(1))


def test_security_exposure_is_at_most_2_5(root):
    install(root)
    score = exposure(root)
    print(f"systemd-analyze security exposure: {score}")
    assert score <= 2.5


def test_security_score_reacts_to_the_hardening(root):
    # The figure is read from the installed unit, not a constant: strip the
    # sandbox and it must get worse.
    install(root)
    unit = root / "etc/systemd/system/lockerd.service"
    hardened = exposure(root)
    unit.write_text("\n".join(line for line in unit.read_text().splitlines()
                              if not line.startswith(("DynamicUser", "ProtectSystem", "SystemCallFilter",
                                                      "CapabilityBoundingSet"))))
    assert exposure(root) > hardened + 2


def test_uninstall_removes_the_service_and_keeps_config_and_journal(root):
    install(root)
    state = root / "var/lib/lockerd"
    state.mkdir(parents=True)
    (state / "journal.db").write_bytes(b"the station's record")
    r = run(UNINSTALL, "--root", root)
    for gone in ("etc/systemd/system/lockerd.service", "etc/udev/rules.d/99-lockerd.rules", "opt/lockerd",
                 "etc/systemd/system/multi-user.target.wants/lockerd.service"):
        assert not (root / gone).exists(), gone
    assert (root / "etc/lockerd/lockerd.toml").is_file()
    assert (state / "journal.db").read_bytes() == b"the station's record"
    assert "not run) systemctl disable --now lockerd.service" in r.stdout
    # And again: nothing left to remove is not an error.
    run(UNINSTALL, "--root", root)


def test_the_screens_unit_is_installed_beside_the_daemons_but_left_disabled_and_uninstalled_with_it(root):
    r = install(root)
    unit = root / "etc/systemd/system/lockerd-display.service"
    assert unit.read_text() == DISPLAY_UNIT.read_text() and mode(unit) == 0o644
    assert not (root / "etc/systemd/system/multi-user.target.wants/lockerd-display.service").exists()
    assert "not run) systemctl try-restart lockerd-display.service" in r.stdout  # an update restarts it if running
    r = run(UNINSTALL, "--root", root)
    assert not unit.exists()
    assert "not run) systemctl disable --now lockerd-display.service" in r.stdout


def test_uninstall_purge_deletes_config_and_journal(root):
    install(root)
    (root / "var/lib/private/lockerd").mkdir(parents=True)
    (root / "var/lib/lockerd").symlink_to("private/lockerd")
    run(UNINSTALL, "--root", root, "--purge")
    for gone in ("etc/lockerd", "var/lib/lockerd", "var/lib/private/lockerd", "opt/lockerd"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone


def test_reinstall_after_uninstall_restores_the_service(root):
    install(root)
    venv = root / "opt/lockerd/venv/bin/lockerd"
    stand_in = venv.read_text()
    run(UNINSTALL, "--root", root)
    venv.parent.mkdir(parents=True)
    venv.write_text(stand_in)
    venv.chmod(0o755)
    r = install(root)
    assert "keeping the existing /etc/lockerd/lockerd.toml" in r.stdout
    assert (root / "etc/systemd/system/lockerd.service").is_file()


# --- The udev rules: no udevadm here, so check their grammar ourselves --------

_KEYS_MATCH = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "ENV", "ATTRS"}
_KEYS_ASSIGN = {"ENV", "GROUP", "MODE", "SYMLINK", "GOTO", "LABEL"}
_PAIR = re.compile(r'\s*([A-Z]+)(?:\{([A-Za-z0-9_]+)\})?\s*(==|!=|\+=|=)\s*"([^"]*)"\s*(?:,|$)')


def test_udev_rules_parse_and_every_goto_has_its_label():
    labels, gotos, symlinks = set(), set(), []
    for n, line in enumerate(RULES.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pos = 0
        while pos < len(line):
            m = _PAIR.match(line, pos)
            assert m, f"99-lockerd.rules:{n}: cannot parse from column {pos}: {line[pos:]!r}"
            key, _attr, op, value = m.groups()
            known = _KEYS_MATCH if op in ("==", "!=") else _KEYS_ASSIGN
            assert key in known, f"99-lockerd.rules:{n}: {key} {op} is not a rule we expect"
            if key == "LABEL":
                labels.add(value)
            elif key == "GOTO":
                gotos.add(value)
            elif key == "SYMLINK":
                symlinks.append(value)
            elif key == "MODE":
                assert value == "0660", f"99-lockerd.rules:{n}: devices are group-accessible only"
            elif key == "GROUP":
                assert value in ("dialout", "gpio"), f"99-lockerd.rules:{n}: only the unit's groups"
            pos = m.end()
    assert gotos <= labels, f"GOTO without LABEL: {gotos - labels}"
    assert symlinks and all(s.startswith("lockerd/$env{LOCKERD_ROLE}-") for s in symlinks)


def test_unit_groups_match_the_udev_rules():
    unit = UNIT.read_text()
    groups = re.search(r"^SupplementaryGroups=(.*)$", unit, re.M).group(1).split()
    rule_groups = set(re.findall(r'GROUP="([^"]+)"', RULES.read_text()))
    assert set(groups) == rule_groups == {"dialout", "gpio"}


def test_the_drop_ins_in_the_guide_verify(root):
    # docs/install.md tells technicians to paste these: they must be valid.
    install(root)
    blocks = re.findall(r"```ini\n(.*?)```", (REPO / "docs/install.md").read_text(), re.S)
    assert len(blocks) >= 2
    dropins = root / "etc/systemd/system/lockerd.service.d"
    dropins.mkdir()
    for i, block in enumerate(blocks):
        (dropins / f"{i}.conf").write_text(block)
    r = run(SYSTEMD_ANALYZE, "verify", f"--root={root}", "lockerd.service", ok=False)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    assert exposure(root) <= 2.5


def test_unit_keeps_the_contract_the_daemon_relies_on():
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert int(settings["WatchdogSec"][0]) > 0 and settings["Restart"] == ["on-failure"]
    assert settings["ExecStartPre"] == ["/opt/lockerd/venv/bin/lockerd check-config /etc/lockerd/lockerd.toml"]
    assert settings["ExecStart"] == ["/opt/lockerd/venv/bin/lockerd run --config /etc/lockerd/lockerd.toml"]
    # Whatever way the daemon ends, the relays are switched off (tests/test_hardware_truth.py runs all-off).
    assert settings["ExecStopPost"] == ["-/opt/lockerd/venv/bin/lockerd all-off --config /etc/lockerd/lockerd.toml"]
    # lgpio needs a writable working directory: the state directory.
    assert settings["WorkingDirectory"] == ["/var/lib/lockerd"] and settings["StateDirectory"] == ["lockerd"]
    assert settings["DevicePolicy"] == ["closed"] and "PrivateDevices" not in settings
    assert {"char-ttyACM rw", "char-ttyUSB rw", "char-gpiochip rw"} <= set(settings["DeviceAllow"])
    assert settings["CapabilityBoundingSet"] == [""] and settings["DynamicUser"] == ["yes"]
