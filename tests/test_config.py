"""Strict config validation: every mistake at once, each named precisely."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rig import TOML

from lockerd import config
from lockerd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert all(p.startswith(str(path)) for p in e.value.problems)  # every line names the file
    return e.value.problems


def test_shipped_configs_are_valid():
    for path in (ROOT / "config").glob("*.toml"):
        cfg = config.load(path)
        assert cfg.compartments, path


def test_demo_station_has_24_dossier_and_8_evidence_compartments():
    cfg = config.load(ROOT / "config" / "demo.toml")
    kinds = [c.kind for c in cfg.compartments.values()]
    assert kinds.count("dossier") == 24 and kinds.count("evidence") == 8


def test_every_mistake_is_reported_at_once(tmp_path):
    bad = TOML.replace('site = "test-site"', 'site = "Test Site"') \
        .replace("pulse_ms = 500", "pulse_ms = -5") \
        .replace("jam_after = 3", "jam_after = 3\njam_afterr = 4") \
        .replace('lock_driver = "sim-e"', 'lock_driver = "nope"') \
        .replace('cabinets = ["d"]', 'cabinets = ["z"]') \
        .replace("count = 6", "count = 7")
    found = problems(tmp_path, bad + "\n[bogus]\nx = 1\n")
    text = "\n".join(found)
    assert "controller.site = 'Test Site': expected an id" in text
    assert "timing.pulse_ms = -5: expected an integer from 20 to 5000" in text
    assert "timing.jam_afterr: unknown option" in text
    assert "cabinets.e.lock_driver = 'nope': expected one of the [drivers] sections" in text
    assert "scanners.side.cabinets = ['z']: expected cabinet ids" in text
    # One mistake (a count past the board's channels), one line, at the line of the file that gives it.
    assert sum("cabinets.d.count" in p for p in found) == 1
    count_line = next(n for n, line in enumerate(bad.splitlines(), 1) if line == "count = 7")
    assert f"bad.toml:{count_line}: cabinets.d.count = 7: expected a count its drivers' channels hold: it needs " \
           "lock channels 0-6 of driver 'sim-d', which has 0 to 5; sensor channels 0-6 of driver 'sim-d', which " \
           "has 0 to 5" in text
    assert f"bad.toml:{bad.splitlines().index('jam_afterr = 4') + 1}: timing.jam_afterr: unknown option" in text
    assert "bogus: unknown section" in text
    assert len(found) >= 7


def test_missing_sections_and_wrong_types(tmp_path):
    text = "\n".join(problems(tmp_path, '[controller]\nsite = 3\nnode = "n"\n[timing]\npulse_ms = "fast"\n'))
    assert "[journal]: missing section" in text and "[cabinets]: missing section" in text
    assert "controller.site = 3" in text and "timing.pulse_ms = 'fast': expected an integer" in text


def test_channel_used_twice_and_duplicate_ids(tmp_path):
    bad = TOML.replace("count = 4", 'count = 0\n[[cabinets.e.compartments]]\nid = "e1"\nlock = 0\nsensor = 0\n'
                                    '[[cabinets.e.compartments]]\nid = "e1"\nlock = 0\nsensor = 1\n'
                                    '[[cabinets.e.compartments]]\nid = "e3"\nlock = 0\nsensor = 2\n')
    text = "\n".join(problems(tmp_path, bad))
    assert "id = 'e1': expected an id not already used" in text
    assert "lock = 0: expected a lock channel not already used by compartment e1" in text
    # An entry of an array of tables is found by its place: the third [[cabinets.e.compartments]]'s lock.
    lines = bad.splitlines()
    third = [n for n, line in enumerate(lines, 1) if line == "[[cabinets.e.compartments]]"][2]
    assert f"bad.toml:{third + 2}: cabinets.e.compartments[2].lock = 0: expected a lock channel not already " \
           "used by compartment e1" in text


def test_not_toml_and_not_utf8(tmp_path):
    assert "not valid TOML" in problems(tmp_path, "[controller\n")[0]
    path = tmp_path / "latin.toml"
    path.write_bytes(b"site = '\xe9'")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(path)


def test_check_config_exit_codes(tmp_path):
    good = ROOT / "config" / "demo.toml"
    r = subprocess.run([sys.executable, "-m", "lockerd", "check-config", str(good)], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML.replace("pulse_ms = 500", "pulse_ms = 0"))
    r = subprocess.run([sys.executable, "-m", "lockerd", "check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "timing.pulse_ms = 0" in r.stderr


def test_daemon_refuses_to_start_on_an_invalid_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML.replace('kind = "dossier"', 'kind = "dosier"'))
    r = subprocess.run([sys.executable, "-m", "lockerd", "run", "-c", str(bad)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "cabinets.d.kind = 'dosier'" in r.stderr
    assert not (tmp_path / "journal.db").exists()


def test_more_input_registers_than_one_modbus_read_can_carry(tmp_path):
    board = ('[buses.line]\ntype = "tcp"\nhost = "127.0.0.1"\n'
             '[drivers.regs]\ntype = "modbus"\nbus = "line"\nunit = 1\ninput_kind = "input-register"\ninputs = 126\n')
    text = "\n".join(problems(tmp_path, TOML + board))
    assert "drivers.regs.inputs = 126: expected at most 125 sensors read as input registers" in text


def test_a_driver_option_out_of_bounds_is_a_problem_not_a_crash(tmp_path):
    drivers = ('[drivers.pins]\ntype = "gpio"\nlocks = [100]\nsensors = [6]\n'
               '[drivers.bench]\ntype = "sim"\ncrossed = "1,2"\n'
               '[cabinets.x]\nkind = "dossier"\nlock_driver = "bench"\ncount = 1\nfirst_lock = -5\n')
    text = "\n".join(problems(tmp_path, TOML + drivers))
    assert "drivers.pins.locks = [100]: expected a list of integers from 0 to 53" in text
    assert "drivers.bench.crossed = '1,2': expected a list of integers" in text
    assert "cabinets.x.first_lock = -5: expected an integer from 0 to 65535" in text


def test_a_driver_option_is_declared_once_beside_its_driver():
    from lockerd.drivers.gpio import GpioBoard
    from lockerd.drivers.modbus_board import ModbusBoard
    from lockerd.drivers.sim import SimBoard

    assert config.DRIVER_TYPES == {"sim": SimBoard.OPTIONS, "modbus": ModbusBoard.OPTIONS, "gpio": GpioBoard.OPTIONS}


def test_checking_a_config_loads_no_hardware_library_and_drivers_load_no_config():
    code = ("import sys, lockerd.config, lockerd.drivers.registry; "
            "print(sorted(m for m in ('pymodbus', 'serial', 'gpiozero', 'paho') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    code = ("import sys, lockerd.drivers.registry, lockerd.drivers.modbus; "
            "print(sorted(m for m in sys.modules if m.startswith('lockerd.') and not m.startswith('lockerd.drivers')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "['lockerd.clock', 'lockerd.errors']"


def test_the_display_section_is_checked_and_read(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(TOML + '[display]\nport = 8480\nlanguage = "zh_Hans"\n[display.screens.front]\ncolumns = 3\n'
                           '[display.screens.wall]\nlanguage = "en"\n')
    shown = config.load(path).display
    assert (shown.bind, shown.port, shown.language, shown.local_only) == ("127.0.0.1", 8480, "zh_Hans", True)
    assert shown.screens["front"].columns == 3 and shown.screens["wall"].language == "en"
    assert config.load(tmp_path / "ok.toml").display.token_file is None


def test_display_mistakes_each_get_one_line(tmp_path):
    got = problems(tmp_path, TOML + '[display]\nbind = "0.0.0.0"\nport = 0\nlanguage = "fr"\ncolour = 1\n'
                                    'tls_cert = "c.pem"\n[display.screens.nowhere]\ncolumns = 2\n')
    text = "\n".join(got)
    assert len(got) == 6, text
    assert "display.token_file = (missing): expected a token file: bind = '0.0.0.0'" in text
    assert "display.port = 0" in text and "display.language = 'fr'" in text
    assert "display.colour: unknown option" in text and "display.tls_key = (missing)" in text
    assert "display.screens = 'nowhere': expected a scanner or cabinet id, or 'wall'" in text


def test_the_room_of_the_wall_board_is_read_and_left_out_without_a_broker(tmp_path):
    path = tmp_path / "room.toml"
    path.write_text(TOML + '[display]\nroom_brokers = ["broker.lan:8883", "10.0.0.2:8883"]\nroom_site = "hq"\n'
                           'room_username = "wall"\nroom_password_file = "wall.pw"\nroom_tls = true\n'
                           'room_ca_file = "ca.pem"\n')
    room = config.load(path).display.room
    assert room is not None and room.brokers == ("broker.lan:8883", "10.0.0.2:8883")
    assert (room.site, room.prefix, room.username, room.tls) == ("hq", "lockerd", "wall", True)
    assert room.password_file == tmp_path / "wall.pw" and room.ca_file == tmp_path / "ca.pem"
    path.write_text(TOML + "[display]\nport = 8480\n")
    assert config.load(path).display.room is None  # no broker: the wall shows the local journal


def test_room_mistakes_each_get_one_line(tmp_path):
    got = problems(tmp_path, TOML + '[display]\nroom_brokers = ["broker.lan", "h:99999"]\nroom_prefix = "Lockerd"\n'
                                    'room_site = "HQ"\nroom_tls = true\nroom_cert_file = "c.pem"\n'
                                    'room_password_file = "pw"\nroom_protocol = "4"\n')
    text = "\n".join(got)
    assert len(got) == 8, text
    assert "display.room_brokers[0] = 'broker.lan': expected \"host:port\"" in text
    assert "display.room_brokers[1] = 'h:99999'" in text and "display.room_prefix = 'Lockerd'" in text
    assert "display.room_site = 'HQ'" in text and "display.room_ca_file = '': expected a CA file" in text
    assert "display.room_key_file" in text and "display.room_username = '': expected a user name" in text
    assert "display.room_protocol = '4'" in text
    got = problems(tmp_path, TOML + '[display]\nroom_site = "hq"\n')
    assert len(got) == 1 and "display.room_site = 'hq': expected room_brokers as well" in got[0], got
