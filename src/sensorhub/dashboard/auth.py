"""Access to one user's dashboard: a secret token, as a cookie, a bearer header or `?token=` once.

Cookies are not isolated by port (RFC 6265 §8.5), so the cookie's name carries the user and its
value is bound to this dashboard's user and token: user1's cookie means nothing to user2's dashboard.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import HTTPConnection


class TokenAuth:
    def __init__(self, user: str, token: str) -> None:
        self.user = user
        self.cookie_name = f"sensorhub_{user}"
        self.cookie_path = "/"
        self._token = token.encode()
        self._cookie_value = hmac.new(self._token, f"session:{user}".encode(), hashlib.sha256).hexdigest()

    @property
    def cookie_value(self) -> str:
        return self._cookie_value

    def token_matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self._token)

    def allows(self, connection: HTTPConnection) -> bool:
        header = connection.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(credentials.strip()):
            return True
        cookie = connection.cookies.get(self.cookie_name)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self._cookie_value.encode()):
            return True
        return self.token_matches(connection.query_params.get("token"))
