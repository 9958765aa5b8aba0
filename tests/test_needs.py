"""check-config and run refuse a config whose libraries are not installed, naming the module and the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hwconfig import HEAD

from lockerd import cli
from lockerd.needs import needs

HARDWARE = """
[buses.line]
type = "rtu"
device = "/dev/ttyUSB0"
[drivers.board]
type = "modbus"
bus = "line"
unit = 1
[drivers.pins]
type = "gpio"
locks = [5]
sensors = [6]
[scanners.front]
type = "serial"
port = "/dev/ttyACM0"
cabinets = ["d"]
[cabinets.d]
kind = "dossier"
lock_driver = "board"
count = 4
[station]
brokers = ["127.0.0.1:1883"]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "lockerd.toml"
    path.write_text(HEAD + HARDWARE)
    return path


def test_every_part_of_the_config_names_its_modules(config_file: Path) -> None:
    from lockerd import config

    got = {(n.module, n.extra) for n in needs(config.load(config_file))}
    assert {("paho.mqtt.client", "mqtt"), ("lockerd.station.link", "mqtt"),
            ("lockerd.drivers.modbus", "modbus"), ("serial", "modbus"), ("gpiozero", "gpio"),
            ("lockerd.drivers.gpio", "gpio"), ("serial", "serial"), ("lockerd.drivers.serial_scanner", "serial")} <= got
    assert not [m for m, _ in got if m.startswith("pymodbus")]  # both Modbus clients are our own


def test_check_config_passes_when_everything_imports(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(config_file)]) == 0
    assert ": OK:" in capsys.readouterr().out


@pytest.mark.parametrize(("module", "extra"), [("paho.mqtt.client", "mqtt"), ("serial", "modbus"),
                                               ("gpiozero", "gpio")])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_missing_library_stops_check_config_and_run_before_anything_starts(
        config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        module: str, extra: str, command: str) -> None:
    # None in sys.modules makes an import fail as an absent package does.
    monkeypatch.setitem(sys.modules, module, None)
    argv = ["check-config", str(config_file)] if command == "check-config" else ["run", "-c", str(config_file)]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"install lockerd[{extra}]" in err and module.split(".")[0] in err
    assert not (config_file.parent / "j.db").exists()  # nothing started: not even the journal
