"""The topic tree: ``{prefix}/{site}/{node}/...``, every level in [a-z0-9-]."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """Topic names of one controller."""

    prefix: str
    site: str
    node: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.node}"

    @property
    def presence(self) -> str:
        return f"{self.base}/presence"

    @property
    def info(self) -> str:
        return f"{self.base}/info"

    @property
    def checkpoint(self) -> str:
        return f"{self.base}/checkpoint"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def overdue(self) -> str:
        return f"{self.base}/overdue"

    @property
    def replay(self) -> str:
        return f"{self.base}/replay"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    def state(self, compartment: str) -> str:
        return f"{self.base}/state/{compartment}"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    @property
    def commands(self) -> str:
        """The subscription filter for this node's commands."""
        return f"{self.base}/cmd/+"

    def command_name(self, topic: str) -> str | None:
        """The command name in a topic of ours, or None for any other topic."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head):]
        return name if name and "/" not in name else None
