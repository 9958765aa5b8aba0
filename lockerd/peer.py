"""Who is on the other end of the control socket: the kernel's word (SO_PEERCRED), not the client's.

Every CLI action is journaled with the peer's uid, user name and pid. Actions
that change who may open what (importing people, badges and assignments) are
for administrators: root, the daemon's own user, or members of
``[controller] admin_group``; the duty staff's group that may use the socket
is not enough.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Any

_UCRED = struct.Struct("3i")  # pid, uid, gid (struct ucred)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    user: str
    groups: frozenset[int]

    def fields(self) -> dict[str, Any]:
        """What is journaled with each of this peer's actions."""
        return {"via": "cli", "uid": self.uid, "user": self.user, "pid": self.pid}

    def is_admin(self, admin_group: str) -> bool:
        if self.uid in (0, os.geteuid()):
            return True
        if not admin_group:
            return False
        try:
            gid = grp.getgrnam(admin_group).gr_gid
        except KeyError:
            return False
        return gid == self.gid or gid in self.groups


def me() -> Peer:
    """This process, for an in-process caller of the control dispatcher (the demo)."""
    uid = os.getuid()
    return Peer(os.getpid(), uid, os.getgid(), _user_name(uid), frozenset(os.getgroups()))


def of(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    user = _user_name(uid)
    return Peer(pid, uid, gid, user, _groups(pid, user, gid))


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _groups(pid: int, user: str, gid: int) -> frozenset[int]:
    """The peer process's supplementary groups as the kernel has them; the user's configured ones otherwise."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except OSError:
        pass
    try:
        return frozenset(os.getgrouplist(user, gid))
    except (KeyError, OSError):
        return frozenset()
