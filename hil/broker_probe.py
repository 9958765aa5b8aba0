"""Does a station broker take this controller? One connection with the station's credentials and TLS."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from lockerd.hil.report import BrokerResult


def probe_broker(settings: Any, host: str, port: int, timeout: float) -> BrokerResult:
    """Connect once to a broker with the station's credentials and TLS; a clean session under a bench client id.

    The bench never uses the daemon's client id: the broker would hand it the
    daemon's queued commands.
    """
    import ssl

    from lockerd.station.mqtt import new_client

    res = BrokerResult(f"{host}:{port}")
    c = new_client(settings, f"{settings.client_id}-bench", clean=True, connect_timeout=timeout)
    answer: list[Any] = []
    c.on_connect = lambda _c, _u, _f, reason, _p: answer.append((reason, time.perf_counter()))
    t0 = time.perf_counter()
    try:
        c.connect(host, port, keepalive=30)
        deadline = t0 + timeout
        while not answer and time.perf_counter() < deadline:
            c.loop(timeout=0.05)
    except (OSError, ssl.SSLError, ValueError) as e:
        res.error = f"cannot connect: {e}"
        return res
    finally:
        if answer and not answer[0][0].is_failure:
            with contextlib.suppress(Exception):
                c.disconnect()
        with contextlib.suppress(Exception):
            c.socket() and c.socket().close()
    if not answer:
        res.error = f"no answer (CONNACK) within {timeout:g} s"
    elif answer[0][0].is_failure:
        res.error = f"refused: {answer[0][0]}"
    else:
        res.ok = True
        res.latency_ms = round((answer[0][1] - t0) * 1000, 3)
    return res
