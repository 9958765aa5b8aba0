"""The wheel a user installs: built from a clean copy, installed into a fresh venv that cannot see the checkout."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from broker import Mosquitto, Recorder
from installed import RUNTIME_LOCK, check_modules, clean_copy, daemon_comes_online, demo_plays, run, tree_modules

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = clean_copy(tmp_path_factory.mktemp("src") / "lockerd")
    out = tmp_path_factory.mktemp("dist")
    # The locked setuptools of the test venv builds it, as the installs do.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=120)
    [whl] = out.glob("lockerd-*.whl")
    return whl


def test_the_wheel_holds_every_module_of_the_tree(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [m for m in tree_modules()
               if f"{m.replace('.', '/')}.py" not in names and f"{m.replace('.', '/')}/__init__.py" not in names]
    assert missing == [], f"the wheel lacks {missing}"
    assert "lockerd/station/link.py" in names


def test_the_installed_wheel_runs_a_daemon_with_a_station_link(wheel: Path, tmp_path: Path, mosquitto: Mosquitto,
                                                                recorders: list[Recorder]) -> None:
    home = tmp_path / "user"  # the user's own folder: neither the checkout nor its venv
    home.mkdir()
    env_dir = home / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--require-hashes", "--no-deps", "-r", RUNTIME_LOCK], home)
    run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], home)
    where = check_modules(python, home)
    assert where.is_relative_to(env_dir), f"lockerd was imported from {where}, not from the fresh venv"
    daemon_comes_online(env_dir / "bin" / "lockerd", home / "station", mosquitto, recorders)
    demo_plays(env_dir / "bin" / "lockerd", home)


def test_the_wheel_carries_the_screens_catalogs_and_pages(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("lockerd/display/static/display.js", "lockerd/display/static/display.css",
                 "lockerd/display/locale/zh_Hans/LC_MESSAGES/lockerd_display.po"):
        assert path in names, path
    assert any(n.endswith("entry_points.txt") and "lockerd-display" in zipfile.ZipFile(wheel).read(n).decode()
               for n in names)
