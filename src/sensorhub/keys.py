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

    def data_pattern(self, user: str) -> str:
        """The glob of the user's data keys (for ACLs)."""
        return f"{self._prefix(user)}:data:*"

    def log(self, user: str) -> str:
        return f"{self._prefix(user)}:log"

    def notify(self, user: str) -> str:
        return f"{self._prefix(user)}:notify"

    def webhooks(self, user: str) -> str:
        """Set of the user's webhook endpoint ids."""
        return f"{self._prefix(user)}:webhooks"

    def webhook(self, user: str, endpoint_id: str) -> str:
        """Hash of one endpoint: its URL and secret, its cursor, state and in-flight message."""
        return f"{self._prefix(user)}:webhook:{endpoint_id}"

    def webhook_lease(self, user: str, endpoint_id: str) -> str:
        """Which `sensorhub push` process delivers this endpoint now (SET NX PX, renewed)."""
        return f"{self._prefix(user)}:webhook:{endpoint_id}:lease"

    def webhook_users(self) -> str:
        """Set of the users that have webhook endpoints: what `sensorhub push` scans for new work."""
        return f"{self.namespace}:webhooks" if self.namespace else "webhooks"

    def tokens(self, user: str) -> str:
        """Hash of the user's access tokens for `sensorhub web`: token id -> keyed hash, label, created."""
        return f"{self._prefix(user)}:tokens"

    def token_users(self) -> str:
        """Set of the users that have tokens: what `sensorhub token list` walks."""
        return f"{self.namespace}:tokens" if self.namespace else "tokens"

    def tokens_revoked(self) -> str:
        """A counter bumped by every revoke: `sensorhub web` polls it to end the revoked token's streams."""
        return f"{self.namespace}:tokens:revoked" if self.namespace else "tokens:revoked"

    def rules(self, user: str) -> str:
        """Hash of the user's alert rules: rule id -> the rule as JSON."""
        return f"{self._prefix(user)}:rules"

    def alert_state(self, user: str) -> str:
        """String: `sensorhub alerts`' state for the user as JSON (cursor, station tracks, rule states)."""
        return f"{self._prefix(user)}:alerts:state"

    def alerts(self, user: str) -> str:
        """Stream: the user's alert log (capped, trimmed by the reading TTL); entry ids are alert ids."""
        return f"{self._prefix(user)}:alerts"

    def alert_newest(self, user: str) -> str:
        """String: the id of the user's newest alert (TTL): what the dashboards probe, many users at once."""
        return f"{self._prefix(user)}:alerts:newest"

    def alert_acks(self, user: str) -> str:
        """Hash: alert id -> when the user acknowledged it (ms); expires with the TTL."""
        return f"{self._prefix(user)}:alerts:acked"

    def alert_users(self) -> str:
        """Set of the users that have alert rules: the ones `sensorhub alerts` follows."""
        return f"{self.namespace}:alert-users" if self.namespace else "alert-users"

    def user_pattern(self, user: str) -> str:
        """The glob of everything that belongs to `user` (for ACLs and clean-up)."""
        return f"{self._prefix(user)}:*"
