"""Exports of a time range carry the hash chain; a tampered export is caught and its first bad row named."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_asyncio
from rig import Rig, close_rig, make_rig

from lockerd.cli import main
from lockerd.clock import iso_utc
from lockerd.export_verify import ExportCheck, verify_export
from lockerd.journal import GENESIS, canonical, chain_hash
from lockerd.journal_export import ROW_FIELDS, read_export
from lockerd.journal_reader import open_journal

pytestmark = pytest.mark.asyncio


async def opening(rig: Rig, code: str, channel: int) -> None:
    out = await rig.scan(code)
    assert out.pulsed, out
    await rig.pull(rig.d, channel)
    await rig.close(rig.d, channel)


@pytest_asyncio.fixture
async def rig(tmp_path):
    """A journal spanning three hours: a deposit, a checkout an hour later, a return an hour after that."""
    r = await make_rig(tmp_path)
    r.marks = [r.clock.wall()]  # type: ignore[attr-defined]
    for _ in range(3):
        await r.clock.advance(3600)
        r.marks.append(r.clock.wall())  # type: ignore[attr-defined]
        await opening(r, "D-1", 0)
        await opening(r, "D-3", 1)
    await r.clock.advance(1)  # the last pulses end
    await r.flush()
    yield r
    await close_rig(r)


def export(rig: Rig, tmp: Path, fmt: str, *args: str) -> Path:
    out = tmp / f"export.{fmt}"
    assert main(["export", "-c", str(rig.cfg.path), "-o", str(out), *args]) == 0
    return out


def check(rig: Rig, path: Path, journal: bool = True) -> ExportCheck:
    if not journal:
        return verify_export(path)
    with contextlib.closing(open_journal(rig.cfg.journal_path)) as conn:
        return verify_export(path, conn)


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_export_carries_the_hash_chain_and_verifies_against_the_journal(rig, tmp_path, fmt, capsys):
    path = export(rig, tmp_path, fmt)
    meta, _, rows = read_export(path)
    journal = rig.journal.read(0, 100000)
    assert meta["count"] == len(rows) == len(journal) and meta["site"] == "test-site"
    assert meta["first_seq"] == 1 and meta["last_seq"] == journal[-1].seq and meta["last_hash"] == journal[-1].hash
    prev = GENESIS
    for row, ev in zip(rows, journal, strict=True):
        c = row.cells
        # Checkable by anyone: sha256 over prev, a newline and the exact payload, linking row to row.
        assert c["prev"] == prev
        assert hashlib.sha256((c["prev"] + "\n" + c["payload"]).encode()).hexdigest() == c["hash"] == ev.hash
        assert json.loads(c["payload"]) == ev.record()
        assert int(c["seq"]) == ev.seq and c["kind"] == ev.kind and c["ts"] == ev.ts
        prev = c["hash"]
    assert check(rig, path).ok and check(rig, path, journal=False).ok
    capsys.readouterr()
    assert main(["verify-export", str(path), "-c", str(rig.cfg.path)]) == 0
    said = capsys.readouterr().out.strip()
    assert said == f"{path}: OK: {len(rows)} rows, chain intact, every row matches the journal"
    assert main(["verify-export", str(path), "--standalone"]) == 0
    assert "checked on its own, without the journal" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_export_of_a_time_range(rig, tmp_path, fmt):
    since, until = iso_utc(rig.marks[2]), iso_utc(rig.marks[3])  # the checkout hour only
    path = export(rig, tmp_path, fmt, "--since", since, "--until", until)
    _, _, rows = read_export(path)
    inside = [e for e in rig.journal.read(0, 100000) if since <= e.ts <= until]
    assert [int(r.cells["seq"]) for r in rows] == [e.seq for e in inside]
    assert {r.cells["kind"] for r in rows} >= {"dossier.checked_out", "door.closed"}
    assert not {"dossier.deposited", "dossier.returned"} & {r.cells["kind"] for r in rows}
    assert check(rig, path).ok and check(rig, path, journal=False).ok


async def test_export_across_a_wall_clock_jump_stays_one_unbroken_chain(rig, tmp_path):
    rig.clock.jump_wall(-3 * 3600)  # NTP steps the clock back past the whole journal
    await opening(rig, "D-1", 0)
    await rig.flush()
    since = iso_utc(rig.marks[2])
    path = export(rig, tmp_path, "csv", "--since", since)
    _, _, rows = read_export(path)
    seqs = [int(r.cells["seq"]) for r in rows]
    assert seqs == list(range(seqs[0], rig.journal.last_seq + 1))  # the jumped-back events ride along
    assert any(r.cells["ts"] < since for r in rows)
    assert check(rig, path).ok


# -- tampering ---------------------------------------------------------------------------------

Rows = list  # the data rows of an export, each a dict of its cells (people as a list)


def load(path: Path) -> tuple[str, dict, Rows]:
    meta, fmt, rows = read_export(path)
    out = []
    for r in rows:
        cells = dict(r.cells)
        if fmt == "csv":
            cells["people"] = cells["people"].split(";") if cells["people"] else []
            cells["compartment"] = cells["compartment"] or None
            cells["dossier"] = cells["dossier"] or None
            cells["seq"] = int(cells["seq"])
        out.append(cells)
    return fmt, meta, out


def save(path: Path, fmt: str, meta: dict, rows: Rows) -> None:
    """Write rows back the way an editor (or a script) would, keeping the header."""
    if fmt == "json":
        path.write_text(json.dumps({**meta, "events": rows}))
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ROW_FIELDS)
    for r in rows:
        w.writerow(["" if r[k] is None else ";".join(r[k]) if k == "people" else r[k] for k in ROW_FIELDS])
    path.write_text(path.read_text().splitlines(keepends=True)[0] + buf.getvalue())


def edit_column(rows: Rows) -> None:
    rows[4]["dossier"] = "D-OTHER"  # a readable column no longer says what was hashed


def edit_payload(rows: Rows) -> None:
    rows[4]["payload"] = rows[4]["payload"].replace('"mono":', '"mono":1')


def edit_and_rehash(rows: Rows) -> None:
    """A careful forger: changes the event and recomputes its hash (the next row's link then breaks)."""
    record = json.loads(rows[4]["payload"]) | {"compartment": "d06"}
    rows[4].update(compartment="d06", payload=canonical(record), hash=chain_hash(rows[4]["prev"], record))


def delete_row(rows: Rows) -> None:
    del rows[4]


def insert_copy(rows: Rows) -> None:
    rows.insert(5, dict(rows[2]))


def insert_forged(rows: Rows) -> None:
    """A row made up to chain onto row 5, with the next seq and a valid hash of its own."""
    record = json.loads(rows[4]["payload"]) | {"seq": rows[4]["seq"] + 1, "kind": "dossier.returned"}
    rows.insert(5, {**rows[4], "seq": record["seq"], "kind": record["kind"], "prev": rows[4]["hash"],
                    "payload": canonical(record), "hash": chain_hash(rows[4]["hash"], record)})


def reorder(rows: Rows) -> None:
    rows[4], rows[5] = rows[5], rows[4]


def delete_last(rows: Rows) -> None:
    del rows[-1]


def delete_first(rows: Rows) -> None:
    del rows[0]


# (tampering, first bad row against the journal, first bad row on its own, words in the reason on its own)
TAMPERING: list[tuple[Callable[[Rows], None], int | str, int | str, str]] = [
    (edit_column, 5, 5, "column dossier says"),
    (edit_payload, 5, 5, "its hash is not sha256(prev + payload)"),
    (edit_and_rehash, 5, 6, "its prev does not link to the hash of the row before"),
    (delete_row, 5, 5, "missing before it (rows deleted)"),
    (insert_copy, 6, 6, "rows reordered or inserted"),
    (insert_forged, 6, 7, "rows reordered or inserted"),
    (reorder, 5, 5, "should come next but is in row 6 (rows reordered)"),
    (delete_last, "end", "end", "(rows deleted at the end)"),
    (delete_first, 1, 1, "the header says the export starts at seq"),
]


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("tamper,bad_journal,bad_alone,words", TAMPERING, ids=[t[0].__name__ for t in TAMPERING])
async def test_tampered_export_is_detected_and_the_first_bad_row_named(rig, tmp_path, fmt, tamper, bad_journal,
                                                                       bad_alone, words, capsys):
    path = export(rig, tmp_path, fmt)
    fmt_read, meta, rows = load(path)
    assert fmt_read == fmt
    n = len(rows)
    save(path, fmt, meta, rows)
    assert check(rig, path).ok, "rewriting an untouched export must keep it valid"
    tamper(rows)
    save(path, fmt, meta, rows)
    with_journal, alone = check(rig, path), check(rig, path, journal=False)
    for r, bad in ((with_journal, bad_journal), (alone, bad_alone)):
        assert not r.ok
        assert r.first_bad == (n if bad == "end" else bad), r.reason
        if bad != "end":
            assert r.reason.startswith(f"row {bad} (")
    assert words in alone.reason, alone.reason
    capsys.readouterr()
    assert main(["verify-export", str(path), "-c", str(rig.cfg.path)]) == 1
    assert capsys.readouterr().out.strip() == f"{path}: BAD: {with_journal.reason}"


async def test_export_matching_another_journal_is_caught(rig, tmp_path):
    """A whole export made up from scratch, internally consistent, does not match this journal."""
    path = export(rig, tmp_path, "json")
    fmt, meta, rows = load(path)
    prev = GENESIS
    for r in rows:  # rewrite history: every row re-hashed, chain intact
        record = json.loads(r["payload"]) | {"boot": "forged"}
        r.update(prev=prev, payload=canonical(record), hash=chain_hash(prev, record))
        prev = r["hash"]
    save(path, fmt, {**meta, "last_hash": prev}, rows)
    assert check(rig, path, journal=False).ok  # on its own it is consistent ...
    r = check(rig, path)
    assert not r.ok and r.first_bad == 1 and "differs from the journal" in r.reason  # ... but not this journal's


async def test_not_an_export(rig, tmp_path, capsys):
    bogus = tmp_path / "x.csv"
    bogus.write_text("seq,ts\n1,2\n")
    r = check(rig, bogus)
    assert not r.ok and r.first_bad == 0 and "the first line should start with '#lockerd-export'" in r.reason
    with pytest.raises(SystemExit) as e:
        main(["export", "-c", str(rig.cfg.path), "--since", "yesterday"])
    assert e.value.code == 2
    assert "--since 'yesterday'" in capsys.readouterr().err


async def test_csv_export_saved_back_by_a_spreadsheet_still_verifies(rig, tmp_path):
    """A byte-order mark and CRLF line ends change no field: the export still checks out."""
    path = export(rig, tmp_path, "csv")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    assert check(rig, path).ok and check(rig, path, journal=False).ok
