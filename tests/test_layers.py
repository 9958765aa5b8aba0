"""The house keeps its shape: no module imports one from a layer above its own (docs/architecture.md).

Every import counts, also one inside a function or under TYPE_CHECKING: an
import that runs late is still a dependency, and a loop through it is still
a loop for whoever reads the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module may import its own layer and the layers below.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["lockerd/errors.py", "lockerd/clock.py", "lockerd/calendar.py", "lockerd/peer.py",
              "lockerd/secretfile.py", "lockerd/__init__.py"]),
    ("drivers and keys", ["drivers/", "lockerd/station/signing.py"]),
    ("journal", ["lockerd/journal.py", "lockerd/journal_*.py", "lockerd/projection.py", "lockerd/checkpoints.py",
                 "lockerd/badges.py", "lockerd/sdnotify.py"]),
    ("domain", ["lockerd/domain.py", "lockerd/evidence.py", "lockerd/deadlines.py", "lockerd/custody_rules.py"]),
    ("config", ["lockerd/config.py", "lockerd/config_*.py"]),
    ("hardware and station link", ["lockerd/hardware.py", "lockerd/hwlock.py", "lockerd/needs.py",
                                   "lockerd/station/"]),
    ("opening", ["lockerd/opening.py", "lockerd/tasks.py", "lockerd/liveness.py"]),
    ("around the controller", ["lockerd/two_person.py", "lockerd/supervision.py", "lockerd/alarms.py",
                               "lockerd/recovery.py", "lockerd/registration.py", "lockerd/overrides.py",
                               "lockerd/presence.py", "lockerd/custody.py", "lockerd/photos.py"]),
    ("controller", ["lockerd/controller.py"]),
    ("commands and reports", ["lockerd/commands/", "lockerd/importer.py", "lockerd/custody_report.py",
                              "lockerd/occupancy.py", "lockerd/export_verify.py", "lockerd/photo_verify.py",
                              "lockerd/metrics.py"]),
    ("transports", ["lockerd/control_socket.py", "lockerd/station_handler.py"]),
    ("daemon", ["lockerd/daemon.py", "lockerd/demo.py"]),
    ("command line", ["lockerd/cli.py", "lockerd/cli_*.py", "lockerd/__main__.py", "hil/"]),
    # The screens: a process of their own that reads the journal and imports nothing above it runs in them.
    ("display", ["lockerd/display/"]),
]


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("drivers", "hil"):
        parts = ["lockerd", *parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of_files() -> dict[str, tuple[int, str]]:
    """Module name -> (layer index, layer name), for every module of the package."""
    out: dict[str, tuple[int, str]] = {}
    for i, (name, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            paths = (ROOT / pattern).rglob("*.py") if pattern.endswith("/") else ROOT.glob(pattern)
            for path in paths:
                out.setdefault(module_of(path), (i, name))
    return out


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_every_module_has_a_layer() -> None:
    layers = layer_of_files()
    modules = {module_of(p) for folder in ("lockerd", "drivers", "hil") for p in (ROOT / folder).rglob("*.py")}
    assert sorted(modules - set(layers)) == []


def test_no_module_imports_from_a_layer_above() -> None:
    layers = layer_of_files()
    upward = []
    for folder in ("lockerd", "drivers", "hil"):
        for path in (ROOT / folder).rglob("*.py"):
            me = module_of(path)
            mine, my_name = layers[me]
            for name in imports_of(path):
                if name in layers and layers[name][0] > mine:
                    upward.append(f"{me} ({my_name}) imports {name} ({layers[name][1]})")
    assert upward == []
