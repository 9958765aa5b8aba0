"""The config checker: values against option tables, every problem collected with file, key path and value.

Shared by the section modules (``config_*``) and by :mod:`lockerd.config`,
which runs them. Option tables are :class:`~lockerd.drivers.options.Opt`
maps, whether a driver or the core declares them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lockerd.drivers.options import MISSING, Opt

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
ID_EXPECT = "an id of 1-32 characters from a-z, 0-9 and '-' (used in MQTT topics)"


class Checker:
    """Checks values against option tables and collects every problem, each naming the file, the line where
    the file gives one, and the key path."""

    def __init__(self, file: Path, text: str = ""):
        self.file = file
        self.problems: list[str] = []
        self._lines = key_lines(text)

    def where(self, path: str) -> str:
        """``file:line`` of the key (or of the nearest table around it) that ``path`` names, else the file."""
        probe = path
        while probe:
            if probe in self._lines:
                return f"{self.file}:{self._lines[probe]}"
            probe = probe.rpartition(".")[0] if "." in probe else ""
        return str(self.file)

    def problem(self, path: str, value: Any, expected: str) -> None:
        shown = "(missing)" if value is MISSING else repr(value)
        self.problems.append(f"{self.where(path)}: {path} = {shown}: expected {expected}")

    def expect(self, opt: Opt) -> str:
        if opt.choices is not None:
            return "one of " + ", ".join(repr(c) for c in opt.choices)
        base = {
            "str": "a string",
            "path": "a file path (string)",
            "id": ID_EXPECT,
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "list-str": "a list of strings",
            "list-int": "a list of integers",
            "list-id": f"a list of ids ({ID_EXPECT})",
            "table": "a table",
        }[opt.kind]
        if opt.min is not None and opt.max is not None:
            base += f" from {opt.min:g} to {opt.max:g}"
        elif opt.min is not None:
            base += f" of at least {opt.min:g}"
        elif opt.max is not None:
            base += f" of at most {opt.max:g}"
        return base

    def value(self, path: str, raw: Any, opt: Opt) -> Any:
        """Check one value; returns it (converted) or MISSING after noting a problem."""
        k = opt.kind
        ok = _IS.get(k, _anything)(raw)
        if ok and k == "float":
            raw = float(raw)
        if ok and opt.choices is not None:
            ok = raw in opt.choices
        if ok and k in ("int", "float"):
            ok = _within(raw, opt)
        if ok and k == "list-int":
            ok = all(_within(x, opt) for x in raw)
        if not ok:
            self.problem(path, raw, self.expect(opt))
            return MISSING
        if k == "path":
            p = Path(raw).expanduser()
            return p if p.is_absolute() else (self.file.parent / p).resolve()
        if k.startswith("list-"):
            return tuple(raw)
        return raw

    def table(self, path: str, raw: Any, spec: dict[str, Opt]) -> dict[str, Any]:
        """Check a table against a spec; unknown keys and missing required ones are problems."""
        out: dict[str, Any] = {}
        if not isinstance(raw, dict):
            self.problem(path, raw, "a table")
            raw = {}
        for key in raw:
            if key not in spec:
                known = ", ".join(sorted(spec)) or "none"
                self.problems.append(
                    f"{self.where(join(path, key))}: {join(path, key)}: unknown option (known here: {known})"
                )
        for key, opt in spec.items():
            if key in raw:
                out[key] = self.value(join(path, key), raw[key], opt)
            elif opt.required:
                self.problem(join(path, key), MISSING, self.expect(opt))
                out[key] = MISSING
            else:
                out[key] = opt.default
        return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_text(x: Any) -> bool:
    return isinstance(x, str) and x != ""


def _is_id(x: Any) -> bool:
    return isinstance(x, str) and bool(ID_RE.match(x))


def _anything(_x: Any) -> bool:
    return True


# What each kind of option accepts, before its choices and bounds.
_IS: dict[str, Callable[[Any], bool]] = {
    "str": _is_text,
    "path": _is_text,
    "id": _is_id,
    "int": _is_int,
    "float": lambda x: isinstance(x, int | float) and not isinstance(x, bool),
    "bool": lambda x: isinstance(x, bool),
    "list-str": lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x),
    "list-int": lambda x: isinstance(x, list) and all(_is_int(v) for v in x),
    "list-id": lambda x: isinstance(x, list) and all(_is_id(v) for v in x),
    "table": lambda x: isinstance(x, dict),
}


def _within(x: Any, opt: Opt) -> bool:
    return (opt.min is None or x >= opt.min) and (opt.max is None or x <= opt.max)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def names(d: Mapping[str, Any]) -> str:
    """The section names a reference may use, for a message."""
    return ", ".join(sorted(d)) or "none defined"


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _dotted(key: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in re.split(r"\.(?=(?:[^\"']|\"[^\"]*\"|'[^']*')*$)", key))


def key_lines(text: str) -> dict[str, int]:
    """Where each table and key of a TOML text starts: dotted path (an array of tables' entry as ``a.b[i]``)
    -> line number. Keys inside multi-line values are not found; their problems name the nearest table."""
    out: dict[str, int] = {}
    table = ""
    entries: dict[str, int] = {}  # array of tables -> entries so far
    for n, line in enumerate(text.splitlines(), 1):
        if m := _HEADER.match(line):
            name = _dotted(m.group(2))
            if m.group(1) == "[[":
                i = entries.get(name, 0)
                entries[name] = i + 1
                name = f"{name}[{i}]"
            table = name
            out.setdefault(table, n)
        elif m := _KEY.match(line):
            out.setdefault(f"{table}.{_dotted(m.group(1))}" if table else _dotted(m.group(1)), n)
    return out
