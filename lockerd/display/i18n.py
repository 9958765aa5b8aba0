"""Languages: gettext catalogs kept as .po files in the package, dates and times in the station's zone.

The catalogs are compiled in memory with Babel when the display starts (a
few milliseconds), so what is shipped is exactly the reviewed .po text and no
build step can leave a stale .mo behind.
"""

from __future__ import annotations

import gettext
import io
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_datetime, format_time
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from lockerd.config_display import LANGUAGES

DOMAIN = "lockerd_display"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DEFAULT = "en"

# A text to translate later: (msgid, its named fields).
Text = tuple[str, dict[str, Any]]


def N_(msgid: str, **fields: Any) -> Text:
    """Mark a message for the catalogs; it is translated when a screen in some language renders it."""
    return msgid, fields


@cache
def _catalog(language: str) -> gettext.NullTranslations:
    po = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not po.exists():
        return gettext.NullTranslations()
    with po.open("rb") as f:
        catalog = read_po(f, locale=language)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


@dataclass(frozen=True)
class Lang:
    """One language at one station: translated messages, local dates and times."""

    code: str
    tz: ZoneInfo

    @property
    def locale(self) -> Locale:
        return Locale.parse(self.code)

    @property
    def html_lang(self) -> str:
        return "zh-Hans" if self.code == "zh_Hans" else self.code

    def text(self, t: Text | str) -> str:
        msgid, fields = (t, {}) if isinstance(t, str) else t
        # Fields that are texts themselves (an action, a reason) are translated first.
        shown = {k: self.text(v) if isinstance(v, tuple) else v for k, v in fields.items()}
        return _catalog(self.code).gettext(msgid).format(**shown)

    def time(self, epoch: float) -> str:
        return format_time(datetime.fromtimestamp(epoch, self.tz), "short", locale=self.locale)

    def when(self, epoch: float) -> str:
        return format_datetime(datetime.fromtimestamp(epoch, self.tz), "short", locale=self.locale)

    def zone(self) -> str:
        return str(self.tz)


def negotiate(accept_language: str | None) -> str:
    """The first language of an Accept-Language header the display speaks (Chinese of any region: simplified)."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        ranked.append((-q, i, tag.strip().lower()))
    for q, _, tag in sorted(ranked):
        if q < 0 and tag.split("-")[0] == "zh":
            return "zh_Hans"
        if q < 0 and tag.split("-")[0] == "en":
            return "en"
    return DEFAULT


def choose(configured: str, accept_language: str | None, asked: str | None = None) -> str:
    """A screen's language: ?lang= in its address, else its config, else the browser's."""
    if asked in LANGUAGES:
        return asked  # type: ignore[return-value]
    return configured or negotiate(accept_language)
