"""lockerd-display in a real browser: the daemon on the sim, the display beside it, headless Chromium.

One daemon, one display and one browser serve the whole module; each test
acts on the sim like a person at the cabinet and reads what the page shows,
in English and in Simplified Chinese. Every page is saved as a screenshot
in tests/screens/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rig import TOML, close_rig, make_rig
from test_daemon_e2e import cli, running_daemon

from lockerd.clock import ManualClock

SCREENS = Path(__file__).resolve().parent / "screens"
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMEDRIVER is None or not Path("/usr/bin/chromium").exists(),
                                reason="chromium and chromium-driver not installed (scripts/setup installs them)")

# Dossiers are due back half an hour after they are taken out; the reminders climb every half hour.
CUSTODY = """
[custody]
return_without_shifts_h = 0.5
tick_s = 1
[custody.return]
levels = ["officer", "supervisor", "legal"]
after_s = [0, 1800, 3600]
ack_pause_s = 600
"""
HOUR = 3600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def yesterday_evening(folder: Path, text: str) -> None:
    """Officer Berg took dossier D-1 out three hours ago and never brought it back: by now the
    reminders have climbed to the legal section."""
    rig = await make_rig(folder, text, clock=ManualClock(wall=time.time() - 3 * HOUR))
    try:
        for _ in range(2):  # its deposit, then its checkout
            await rig.scan("D-1")
            await rig.pull(rig.d, 0)
            await rig.close(rig.d, 0)
            await rig.clock.advance(2)
        for _ in range(6):
            await rig.clock.advance(HOUR / 2)
        await rig.flush()
    finally:
        await close_rig(rig)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"display exited: {proc.stderr.read() if proc.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)  # polling for readiness, not standing in for it
    raise AssertionError("the display did not listen")


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("station")
    port = free_port()
    text = TOML + CUSTODY + f'[calendar]\ntimezone = "Asia/Shanghai"\n[display]\nport = {port}\nidle_after_s = 30\n'
    asyncio.run(yesterday_evening(folder, text))
    with running_daemon(folder, text) as (cfg, _daemon):
        display = subprocess.Popen([sys.executable, "-m", "lockerd.display", "-c", str(cfg)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_port(port, display)
            yield cfg, f"http://127.0.0.1:{port}"
        finally:
            display.terminate()
            display.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=1280,800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def shows(browser, element: str, text: str, timeout: float = 5) -> str:
    """Wait until the page's element holds ``text``; returns the element's text."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    seen = ""

    def has(d) -> bool:
        nonlocal seen
        try:
            seen = d.find_element(By.ID, element).text
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        return text in seen

    try:
        WebDriverWait(browser, timeout, poll_frequency=0.05).until(has)
    except Exception as e:
        raise AssertionError(f"#{element} never showed {text!r}; it showed {seen!r}") from e
    return seen


def keep(browser, name: str) -> None:
    SCREENS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENS / f"{name}.png"))


def test_a_dossier_scan_opens_its_compartment_and_the_cabinet_screen_says_which(station, browser):
    cfg, url = station
    browser.get(f"{url}/cabinet/front?lang=en")
    shows(browser, "outcome", "")
    assert "open d02" in cli(cfg, "sim", "scan", "D-3", "--pull").stdout
    shows(browser, "outcome", "Compartment d02 is open: D-3, deposit")
    shows(browser, "outcome", "door open")
    cell = browser.find_element("id", "cell-d02")
    assert "here" in cell.get_attribute("class")
    keep(browser, "cabinet-en-open")
    cli(cfg, "sim", "close", "d02")
    shows(browser, "outcome", "door closed")


def test_a_scan_at_the_wrong_cabinet_is_refused_and_says_where_it_belongs(station, browser):
    cfg, url = station
    browser.get(f"{url}/cabinet/side?lang=en")
    shows(browser, "outcome", "")
    cli(cfg, "sim", "scan", "E-1", "--scanner", "side")
    text = shows(browser, "outcome", "Refused: E-1: belongs in cabinet e")
    assert "tone-refused" in browser.find_element("id", "outcome").get_attribute("class"), text
    keep(browser, "cabinet-en-refused")


def test_an_evidence_deposit_shows_who_badged_and_who_is_still_needed_in_chinese(station, browser):
    cfg, url = station
    browser.get(f"{url}/cabinet/front?lang=zh_Hans")
    assert browser.find_element("tag name", "html").get_attribute("lang") == "zh-Hans"
    cli(cfg, "sim", "scan", "B-BERG")
    shows(browser, "pending", "民警 Anna Berg 已刷卡")
    cli(cfg, "sim", "scan", "E-1")
    text = shows(browser, "pending", "等待案管员刷卡")
    assert "E-1" in text and "剩余" in text and "秒" in text
    assert "B-BERG" not in browser.page_source  # a badge's code never reaches a screen
    assert "here" in browser.find_element("id", "cell-e01").get_attribute("class")
    keep(browser, "cabinet-zh-pending")
    time.sleep(0.35)  # the case manager comes after the officer, past the badge burst window
    cli(cfg, "sim", "scan", "B-LIND", "--pull")
    shows(browser, "outcome", "格口 e01 已打开：E-1，存入")
    keep(browser, "cabinet-zh-open")
    cli(cfg, "sim", "close", "e01")


def test_a_forced_door_raises_an_alarm_on_the_cabinet_screen_and_the_wall_board(station, browser):
    cfg, url = station
    browser.get(f"{url}/cabinet/front?lang=en")
    shows(browser, "outcome", "")
    cli(cfg, "sim", "force", "d06")
    shows(browser, "outcome", "Alarm: compartment d06 was forced open")
    browser.get(f"{url}/wall?lang=en")
    shows(browser, "alarms", "d06: forced open, waiting for a supervisor or case manager to acknowledge")


@pytest.mark.parametrize(("lang", "overdue", "level", "alarm", "door"), [
    ("en", "Overdue", "level 3: the legal section", "forced open", "closed"),
    ("zh_Hans", "逾期", "第 3 级：法制部门", "被强行打开", "关闭"),
])
def test_the_wall_board_shows_compartments_overdue_items_alarms_and_today(station, browser, lang, overdue, level,
                                                                          alarm, door):
    cfg, url = station
    cli(cfg, "sim", "force", "d06")  # the test may run first, or on another worker than the cabinet's alarm test
    browser.get(f"{url}/wall?lang={lang}")
    text = shows(browser, "overdue", level)
    assert overdue in text and "D-1" in text and "Anna Berg" in text
    assert alarm in shows(browser, "alarms", "d06")
    cells = shows(browser, "cabinets", "d01")
    assert door in browser.find_element("id", "cell-d03").text and "d01" in cells
    today = shows(browser, "today", "")
    assert today
    keep(browser, f"wall-{lang}")


def test_the_browser_language_chooses_when_the_address_does_not(station, browser):
    _cfg, url = station
    import urllib.request

    req = urllib.request.Request(f"{url}/wall", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"})
    with urllib.request.urlopen(req, timeout=5) as r:
        page = r.read().decode()
    assert 'lang="zh-Hans"' in page and "涉案财物管理室" in page


def test_the_display_reads_the_journal_without_any_way_to_write_it(station):
    cfg, _url = station
    from lockerd.display.source import JournalSource

    src = JournalSource(cfg.parent / "journal.db")
    assert src.last_seq() > 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        src.conn.execute("INSERT INTO outbox (id, delivered) VALUES (2, 0)")
    src.close()


def test_every_message_of_the_screens_is_translated_with_the_same_fields():
    import re

    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    from lockerd.display.i18n import LOCALE_DIR

    used = {m for _f, _l, m, _c, _x in extract_from_dir(str(LOCALE_DIR.parent), keywords={"N_": None},
                                                          method_map=[("**.py", "python")])}
    with (LOCALE_DIR / "zh_Hans" / "LC_MESSAGES" / "lockerd_display.po").open("rb") as f:
        catalog = read_po(f)
    fields = re.compile(r"\{(\w+)\}")
    for msgid in used:
        message = catalog.get(msgid)
        assert message is not None and message.string, f"not translated: {msgid!r}"
        assert set(fields.findall(message.string)) == set(fields.findall(msgid)), msgid


@pytest.mark.asyncio
async def test_off_the_board_every_request_needs_the_token_and_nothing_but_reading_is_served(tmp_path):
    import aiohttp

    from lockerd import config
    from lockerd.display.server import serve

    (tmp_path / "token").write_text("correct-horse-battery\n")
    port = free_port()
    path = tmp_path / "lockerd.toml"
    path.write_text(TOML + f'[display]\nport = {port}\ntoken_file = "token"\n')
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(config.load(path), ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 10)
    url = f"http://127.0.0.1:{port}"
    try:
        # unsafe: keep cookies of an IP address, as a browser does
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.get(f"{url}/wall") as r:
                assert r.status == 401
            async with s.get(f"{url}/wall?token=wrong-token-123") as r:
                assert r.status == 401
            async with s.get(f"{url}/wall?token=correct-horse-battery") as r:
                assert r.status == 200 and "lockerd_display" in r.headers.get("Set-Cookie", "")
            async with s.get(f"{url}/cabinet/front") as r:  # the cookie from now on
                assert r.status == 200
            async with s.post(f"{url}/wall", headers={"Authorization": "Bearer correct-horse-battery"}) as r:
                assert r.status == 405
    finally:
        stop.set()
        await task


def test_a_room_of_two_controllers_on_one_broker_shows_whole_with_presence_and_a_jammed_door(tmp_path, browser):
    """Two daemons of one site on a real Mosquitto; the display hears them only through the broker (it starts
    first, so nothing rests on retained messages): both controllers' compartments and presence, a jammed door
    on one of them, and the other going offline when it stops."""
    from broker import Mosquitto

    broker = Mosquitto(tmp_path).start()
    port = free_port()
    station = f'[station]\nbrokers = ["127.0.0.1:{broker.port}"]\nallow_plaintext = true\n'
    fast = TOML.replace("open_timeout_s = 10", "open_timeout_s = 0.5")  # three unopened pulses make a jam
    texts = {node: fast.replace('node = "node-1"', f'node = "{node}"') + station for node in ("node-1", "node-2")}
    texts["node-1"] += f'[display]\nport = {port}\nroom_brokers = ["127.0.0.1:{broker.port}"]\n'
    folders = {node: tmp_path / node for node in texts}
    for folder in folders.values():
        folder.mkdir()
    (folders["node-1"] / "lockerd.toml").write_text(texts["node-1"])
    display = subprocess.Popen([sys.executable, "-m", "lockerd.display", "-c", str(folders["node-1"] / "lockerd.toml")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, display)
        url = f"http://127.0.0.1:{port}"
        with running_daemon(folders["node-1"], texts["node-1"]) as (cfg1, _d1), \
                running_daemon(folders["node-2"], texts["node-2"]) as (_cfg2, daemon2):
            browser.get(f"{url}/wall?lang=en")
            shows(browser, "controller-node-1", "node-1: online since", timeout=15)
            shows(browser, "controller-node-2", "node-2: online since", timeout=15)
            cells = shows(browser, "cabinets", "node-2: cabinet e")
            assert "node-1: cabinet d" in cells and "node-1: cabinet e" in cells and "node-2: cabinet d" in cells
            for node in ("node-1", "node-2"):
                for cid in ("d01", "d06", "e04"):
                    assert browser.find_element("id", f"cell-{node}-{cid}")
            # A latch that does not give: three pulses without the door opening, and the daemon calls it a jam.
            assert cli(cfg1, "import", str(folders["node-1"] / "data.json")).returncode == 0
            cli(cfg1, "sim", "jam", "d02")
            deadline = time.monotonic() + 30
            while "jam" not in str(json.loads(cli(cfg1, "status", "--json").stdout)["compartments"]["d02"]["faults"]):
                assert time.monotonic() < deadline, "the daemon never journaled the jam"
                cli(cfg1, "sim", "scan", "D-3")
                time.sleep(0.7)  # past open_timeout_s: this pulse counts as not opened
            shows(browser, "cell-node-1-d02", "jammed", timeout=10)
            assert "jammed" not in browser.find_element("id", "cell-node-2-d02").text
            keep(browser, "wall-room-en")
            browser.get(f"{url}/wall?lang=zh_Hans")
            shows(browser, "controller-node-2", "起在线")
            shows(browser, "cell-node-1-d02", "卡住")
            keep(browser, "wall-room-zh")
            daemon2.send_signal(signal.SIGTERM)
            assert daemon2.wait(15) == 0
            shows(browser, "controller-node-2", "起离线", timeout=10)
            assert "offline" in browser.find_element("id", "controller-node-2").get_attribute("class")
            assert "起在线" in browser.find_element("id", "controller-node-1").text
    finally:
        display.terminate()
        display.wait(10)
        broker.kill()
