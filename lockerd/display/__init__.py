"""`lockerd-display`: the cabinet screens and the property-room wall board, read-only beside the daemon.

A separate process: a web server must never delay a pulse. It reads the
daemon's journal through a read-only SQLite connection (the journal is WAL,
so a reader never blocks the writer), follows new events by seq, and pushes
what changed to the browsers with server-sent events. It has no path that
writes: no control socket, no journal writer, no broker publish.
"""
