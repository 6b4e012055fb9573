"""Every Redis key and channel name, in one place.

`{user}` is a Redis Cluster hash tag: one user's data keys, log and channel share a slot, so the
collector's atomic step and sharded Pub/Sub work on a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    namespace: str = ""

    def _prefix(self, user: str) -> str:
        return f"{self.namespace}:{{{user}}}" if self.namespace else f"{{{user}}}"

    def data(self, user: str, ts_ms: int, reading_id: str) -> str:
        return f"{self._prefix(user)}:data:{ts_ms}:{reading_id}"

    def log(self, user: str) -> str:
        return f"{self._prefix(user)}:log"

    def notify(self, user: str) -> str:
        return f"{self._prefix(user)}:notify"

    def user_pattern(self, user: str) -> str:
        """The glob of everything that belongs to `user` (for ACLs and clean-up)."""
        return f"{self._prefix(user)}:*"
