"""`lockerd-display`: the cabinet screens and the property-room wall board, read-only beside the daemon.

A separate process: a web server must never delay a pulse. It reads the
daemon's journal through a read-only SQLite connection (the journal is WAL,
so a reader never blocks the writer), follows new events by seq, and pushes
what changed to the browsers with server-sent events. It has no path that
writes: no control socket, no journal writer, no broker publish.
"""

import sys


def main() -> int:
    """``lockerd-display`` and ``python -m lockerd.display``: a missing display extra said in one line, no traceback."""
    try:
        from lockerd.display.server import main as serve
    except ImportError as e:
        if e.name is None or e.name.split(".")[0] == "lockerd":
            raise  # our own module missing is a broken install, not a missing extra
        print(f"lockerd-display needs the Python module {e.name}, which cannot be imported: "
              f"install lockerd[display]", file=sys.stderr)
        return 2
    return serve()
