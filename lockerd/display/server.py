"""The web server: pages, their live streams (server-sent events) and nothing that writes.

Every route is a GET. A browser on the board (the cabinet's kiosk) needs no
password; off the board, every request carries the token (a header, a
cookie, or ``?token=`` once, which sets the cookie).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import signal
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from lockerd import config as config_mod
from lockerd.clock import iso_utc
from lockerd.display.cabinet import CabinetScreen, screens
from lockerd.display.i18n import N_, Lang, choose
from lockerd.display.room import RoomSource
from lockerd.display.source import JournalSource
from lockerd.display.wall import Today, board, room_board
from lockerd.errors import ConfigError
from lockerd.journal import Event
from lockerd.metrics import JournalMetrics

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "lockerd_display"
CONNECTING = N_("Connecting to the locker...")
TICK_S = 1.0


@dataclass(eq=False)
class Viewer:
    page: str  # "wall" or a cabinet screen's name
    lang: Lang
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(maxsize=8))
    last: str = ""

    def offer(self, payload: str) -> None:
        if payload == self.last:
            return
        self.last = payload
        if self.queue.full():  # a slow browser gets the newest view, not a backlog
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(payload)


class Hub:
    """The journal followed once, every connected page told what changed."""

    def __init__(self, cfg: config_mod.Config):
        self.cfg = cfg
        self.source = JournalSource(cfg.journal_path, cfg.display.poll_ms / 1000)
        self.screens: dict[str, CabinetScreen] = screens(cfg)
        self.today = Today(cfg)
        self.viewers: set[Viewer] = set()
        self.stop = asyncio.Event()
        self.names: dict[str, str] = {}
        self.doors: dict[str, dict[str, Any]] = {}
        # A room with several controllers: the wall hears them on their station broker; the cabinet screens
        # still read the local journal, so they keep working with the station link down.
        self.room: RoomSource | None = None
        if cfg.display.room is not None:
            self.room = RoomSource(cfg.display.room, cfg.site, cfg.node, self.on_room)
            self.today.room = True

    def lang(self, page: str, accept: str | None, asked: str | None) -> Lang:
        screen = self.cfg.display.screens.get(page)
        configured = (screen.language if screen else "") or self.cfg.display.language
        return Lang(choose(configured, accept, asked), self.cfg.calendar.tz)

    def start(self) -> None:
        now = time.time()
        # The screens start from the journal's end: an outcome from before the display started is not news.
        self.source.seq = self.source.last_seq()
        self._load_today(now)
        self._refresh_tables()
        if self.room is not None:
            self.room.start()

    def _load_today(self, now: float) -> None:
        if self.room is not None:
            self.today.reset(now)
        else:
            self.today.load(self.source, now)

    def on_room(self, events: list[Event]) -> None:
        self.today.add(events)
        self.push(wall=True)

    def _refresh_tables(self) -> None:
        self.names = {p["id"]: p.get("name") or p["id"] for p in self.source.table("people")}
        self.doors = {r["id"]: r for r in self.source.table("compartments")}

    def on_batch(self, events: list[Event]) -> None:
        for e in events:
            for s in self.screens.values():
                s.apply(e)
        if self.room is None:
            self.today.add(events)
        self._refresh_tables()
        self.push(wall=self.room is None)

    def view(self, v: Viewer, now: float) -> str:
        if v.page == "wall" and self.room is not None:
            return json.dumps(room_board(self.room, self.today, v.lang, now), ensure_ascii=False)
        if v.page == "wall":
            return json.dumps(board(self.cfg, self.source, self.today, v.lang, now), ensure_ascii=False)
        return json.dumps(self.screens[v.page].view(v.lang, self.names, now, self.cfg.display.idle_after_s,
                                                    self.doors), ensure_ascii=False)

    def push(self, *, wall: bool) -> None:
        now = time.time()
        if wall and iso_utc(self.today.start_of_day(now)) != self.today.day:
            self._load_today(now)  # past midnight in the station's zone: a new day's counts
        for v in list(self.viewers):
            if v.page != "wall" or wall:
                v.offer(self.view(v, now))

    async def run(self) -> None:
        self.start()
        follower = asyncio.create_task(self.source.follow(self.on_batch, self.stop))
        ticks = 0
        try:
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), TICK_S)
                ticks += 1
                # Countdowns and going idle each second; the wall's clock and overdue list every ten.
                self.push(wall=ticks % 10 == 0)
        finally:
            self.stop.set()
            await follower
            if self.room is not None:
                await self.room.stop()
            self.source.close()


def _token(cfg: config_mod.Config) -> str | None:
    path = cfg.display.token_file
    if path is None:
        return None
    token = path.read_text().strip()
    if len(token) < 12:
        raise ConfigError([f"{path}: the display token must be at least 12 characters"])
    return token


def make_app(cfg: config_mod.Config, hub: Hub) -> web.Application:  # noqa: C901 - the routes, side by side
    token = _token(cfg)

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])  # the screens only ever read
        set_cookie = False
        if token is not None:
            given = request.cookies.get(COOKIE) or request.query.get("token") or ""
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[7:]
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise web.HTTPUnauthorized(text="a token is needed: add ?token=... to the address once\n")
            set_cookie = "token" in request.query
        response = await handler(request)
        if set_cookie:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict",
                                secure=cfg.display.tls_cert is not None)
        response.headers["Content-Security-Policy"] = "default-src 'self'; style-src 'self'; script-src 'self'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def lang_of(request: web.Request, page: str) -> Lang:
        return hub.lang(page, request.headers.get("Accept-Language"), request.query.get("lang"))

    def shell(lang: Lang, page: str, kind: str, title: str) -> web.Response:
        html = (f'<!doctype html><html lang="{lang.html_lang}"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width,initial-scale=1">'
                f"<title>{title}</title><link rel=stylesheet href=/static/display.css></head>"
                f'<body class="{kind}" data-page="{page}" data-kind="{kind}" data-lang="{lang.code}">'
                f'<main id=root><p class=connecting>{lang.text(CONNECTING)}</p></main>'
                f"<script src=/static/display.js></script></body></html>")
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def index(request: web.Request) -> web.Response:
        lang = lang_of(request, "wall")
        links = [f'<li><a href="/wall">{lang.text(N_("Property room"))}</a></li>']
        links += [f'<li><a href="/cabinet/{n}">{lang.text(N_("Cabinet {name}", name=n))}</a></li>'
                  for n in hub.screens]
        return web.Response(text=f'<!doctype html><html lang="{lang.html_lang}"><meta charset="utf-8">'
                                 f"<title>lockerd</title><ul>{''.join(links)}</ul></html>", content_type="text/html")

    async def cabinet_page(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in hub.screens:
            raise web.HTTPNotFound(text=f"no scanner or cabinet {name!r} in the config\n")
        lang = lang_of(request, name)
        return shell(lang, name, "cabinet", lang.text(N_("Cabinet {name}", name=name)))

    async def wall_page(request: web.Request) -> web.Response:
        lang = lang_of(request, "wall")
        return shell(lang, "wall", "wall", lang.text(N_("Property room")))

    async def stream(request: web.Request) -> web.StreamResponse:
        page = request.match_info.get("name", "wall")
        if page != "wall" and page not in hub.screens:
            raise web.HTTPNotFound()
        viewer = Viewer(page, lang_of(request, page))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        hub.viewers.add(viewer)
        try:
            viewer.offer(hub.view(viewer, time.time()))
            while not hub.stop.is_set():
                try:
                    payload = await asyncio.wait_for(viewer.queue.get(), 15)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(f"data: {payload}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            hub.viewers.discard(viewer)
        return response

    # Prometheus scrapes /metrics (behind the same token on the LAN); counted from the journal, read-only.
    registry = CollectorRegistry()
    registry.register(JournalMetrics(cfg.journal_path, cfg.site, cfg.node))
    scraping = asyncio.Lock()  # the collector catches up on the journal: one scrape at a time

    async def metrics_page(_request: web.Request) -> web.Response:
        async with scraping:
            # Off the loop: the first scrape reads the whole journal once, and no screen may wait for it.
            body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    app = web.Application(middlewares=[guard])
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/", index)
    app.router.add_get("/cabinet/{name}", cabinet_page)
    app.router.add_get("/wall", wall_page)
    app.router.add_get("/stream/cabinet/{name}", stream)
    app.router.add_get("/stream/wall", stream)
    app.router.add_static("/static/", STATIC)
    return app


async def serve(cfg: config_mod.Config, port: int | None = None, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when run as the service)."""
    hub = Hub(cfg)
    app = make_app(cfg, hub)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    context = None
    if cfg.display.tls_cert is not None and cfg.display.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cfg.display.tls_cert, cfg.display.tls_key)
    site = web.TCPSite(runner, cfg.display.bind, port or cfg.display.port, ssl_context=context)
    await site.start()
    hub_task = asyncio.create_task(hub.run())
    scheme = "https" if context else "http"
    log.warning("lockerd-display: serving %s://%s:%s/ (read-only, journal %s%s)", scheme, cfg.display.bind,
                port or cfg.display.port, cfg.journal_path,
                f", the room from {', '.join(cfg.display.room.brokers)}" if cfg.display.room else "")
    if ready is not None:
        ready.set()
    stop = stop or asyncio.Event()
    try:
        await stop.wait()
    finally:
        hub.stop.set()
        for v in list(hub.viewers):
            v.offer("")  # wake the streams so they end
        await hub_task
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lockerd-display", description="Read-only screens for lockerd: a cabinet "
                                "screen per scanner or cabinet, and the property room's wall board.")
    p.add_argument("-c", "--config", default="/etc/lockerd/lockerd.toml", help="the daemon's config file")
    p.add_argument("--port", type=int, help="override [display] port")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, args.port, stop=stop)

    try:
        asyncio.run(run())
    except ConfigError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return 2
    except OSError as e:
        print(f"lockerd-display: cannot serve: {e}", file=sys.stderr)
        return 1
    return 0
