"""The hardware lock holds without its file: a journal folder that is read-only, missing or a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockerd.hwlock import HardwareBusy, HardwareLock


def test_a_folder_that_cannot_hold_the_lock_file_still_keeps_a_second_holder_out(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the journal's folder should be")
    path = tmp_path / "state" / "journal.db.hardware.lock"
    daemon, bench = HardwareLock(path, "the lockerd daemon"), HardwareLock(path, "lockerd-hil")
    daemon.acquire()
    try:
        with pytest.raises(HardwareBusy, match="in use"):
            bench.acquire()
    finally:
        daemon.release()
    bench.acquire()  # free again once the holder lets go
    bench.release()


def test_the_file_lock_still_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "journal.db.hardware.lock"
    with HardwareLock(path, "the lockerd daemon"), pytest.raises(HardwareBusy, match="the lockerd daemon"):
        HardwareLock(path, "lockerd-hil").acquire()
