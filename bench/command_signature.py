"""Benchmark: what checking a station command's signature costs the controller.

Times, in this process, reading one ``open`` command (parse: JSON, schema,
address, age) and passing it through the link's gate (one Ed25519 verify
against the configured signer and the role check), beside reading the same
command without a signature. The difference is what a signed command adds
before the grant is journaled.

Run: .venv/bin/python bench/command_signature.py [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from broker import SIGNER_SEEDS, public_key

from lockerd.clock import iso_utc
from lockerd.station import signing
from lockerd.station.gate import Gate, Vetting
from lockerd.station.intake import parse
from lockerd.station.signing import Authority, Signer


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    signer = Signer("desk", bytes.fromhex(public_key("desk")), frozenset(Authority))
    gate = Gate({"signers": {"desk": signer}, "tls": True, "username": "node-1"})
    body = {"id": "c-1", "ts": iso_utc(time.time()), "requested_by": "sgt-1", "site": "s", "node": "n",
            "args": {"compartment": "d01", "reason": "court order"}}
    unsigned = json.dumps(body).encode()
    body["signatures"] = [signing.sign("open", body, "desk", SIGNER_SEEDS["desk"])]
    signed = json.dumps(body).encode()
    vetting = Vetting(Authority.OPEN, journaled_args=body["args"])

    def read(payload: bytes):
        return parse("open", payload, retained=False, site="s", node="n", now=time.time(), max_age_s=60)

    def read_and_check() -> None:
        cmd = read(signed)
        assert gate.check(cmd, vetting) is None

    for label, fn in (("unsigned: parse", lambda: read(unsigned)), ("signed: parse + gate", read_and_check)):
        fn()
        xs = sorted(timed(fn, n))
        print(f"{label:<22} n={n}: p50 {statistics.median(xs):.1f} us, p99 {xs[int(len(xs) * 0.99)]:.1f} us")


if __name__ == "__main__":
    main()
