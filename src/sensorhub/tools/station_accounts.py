"""Station accounts in RabbitMQ's user store, through its management HTTP API.

Each station gets a RabbitMQ user of its own (`<user>.<station>`, tagged `sensorhub-station`) that
may publish only to its own topic and read nothing: vhost permissions `^$` / `^amq\\.topic$` / `^$`
and, on `amq.topic`, topic permissions write `^sensors\\.<user>\\.<station>$`, read `^$`. RabbitMQ's
MQTT plugin checks them on every publish and subscribe.

The API rather than rabbitmqctl: it works from any host that can reach the broker (rabbitmqctl must
run on the broker's own host, as root or rabbitmq, with its Erlang cookie), with the administrator
account of SENSORHUB_AMQP_URL, and a test's private node is reached just the same.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import httpx

from sensorhub import stations
from sensorhub.settings import ConfigError, Settings

TAG = "sensorhub-station"
TIMEOUT = 10.0


class AccountError(Exception):
    """The API answered, but not as hoped (no such station, not an administrator): one line for the user."""


@dataclass(frozen=True)
class Account:
    user: str
    station: str
    username: str
    password: str = ""  # known only right after `add`


def check_station(station: str) -> str:
    if not stations.STATION_PATTERN.match(station):
        raise ConfigError(f"--station must be 1-64 characters of [A-Za-z0-9_-] (one MQTT topic level), got {station!r}")
    return station


def _vhost(settings: Settings) -> str:
    """The virtual host of SENSORHUB_AMQP_URL ("/" when the URL names none), URL-quoted for the API."""
    path = settings.amqp_node.path
    return quote(unquote(path[1:]) if len(path) > 1 else "/", safe="")


def _account(settings: Settings) -> tuple[str, str]:
    """The management API is used as the account of SENSORHUB_AMQP_URL."""
    amqp = settings.amqp_node
    return unquote(amqp.username or "guest"), unquote(amqp.password or "guest")


class Accounts:
    """The station accounts of one broker; use as `async with Accounts(settings) as accounts:`."""

    def __init__(self, settings: Settings) -> None:
        self._vhost = _vhost(settings)
        self._topics = stations.Topics(settings.namespace)
        self._client = httpx.AsyncClient(
            base_url=settings.rabbitmq_api_url.rstrip("/") + "/api/",
            auth=_account(settings),
            timeout=TIMEOUT,
        )

    async def __aenter__(self) -> Accounts:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        response = await self._client.request(method, path, json=body)
        if response.status_code in (401, 403):
            raise AccountError(
                f"the RabbitMQ management API refused the account of SENSORHUB_AMQP_URL ({response.status_code}); "
                "managing station accounts needs the administrator tag"
            )
        if response.status_code >= 400 and response.status_code != 404:
            raise AccountError(
                f"RabbitMQ management API: {method} {path} answered {response.status_code}: {response.text}"
            )
        return response

    async def add(self, user: str, station: str) -> Account:
        """Create the station's account (or give an existing one a new password) with its permissions."""
        name = self._topics.username(user, station)
        password = secrets.token_urlsafe(24)
        user_path = f"users/{quote(name, safe='')}"
        await self._call("PUT", user_path, {"password": password, "tags": TAG})
        grant = f"{self._vhost}/{quote(name, safe='')}"
        await self._call("PUT", f"permissions/{grant}", {"configure": "^$", "write": "^amq\\.topic$", "read": "^$"})
        only_own = "^" + re.escape(self._topics.routing_key(user, station)).replace("\\-", "-") + "$"
        await self._call(
            "PUT",
            f"topic-permissions/{grant}",
            {"exchange": stations.TOPIC_EXCHANGE, "write": only_own, "read": "^$"},
        )
        return Account(user, station, name, password)

    async def list(self) -> list[Account]:
        """Every station account (the users tagged sensorhub-station), sorted."""
        found = []
        for entry in (await self._call("GET", "users")).json():
            tags = entry.get("tags", [])
            tags = tags.split(",") if isinstance(tags, str) else tags
            owner = self._topics.owner(entry["name"])
            if TAG in tags and owner is not None:
                found.append(Account(*owner, entry["name"]))
        return sorted(found, key=lambda a: (a.user, a.station))

    async def remove(self, user: str, station: str) -> bool:
        """Delete the station's account; False if there is none. Its open MQTT connections are closed."""
        name = self._topics.username(user, station)
        path = f"users/{quote(name, safe='')}"
        found = await self._call("GET", path)
        if found.status_code == 404 or TAG not in str(found.json().get("tags", "")):
            return False
        await self._call("DELETE", path)
        for connection in (await self._call("GET", "connections?columns=name,user")).json():
            if connection.get("user") == name:
                await self._call("DELETE", f"connections/{quote(connection['name'], safe='')}")
        return True


def mqtt_ports(settings: Settings) -> list[int]:
    """The ports RabbitMQ's MQTT plugin listens on, from the management API (a blocking call, for
    `sensorhub run` before it starts anything). Raises httpx.HTTPError when the API does not answer."""
    response = httpx.get(
        settings.rabbitmq_api_url.rstrip("/") + "/api/overview",
        auth=_account(settings),
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return sorted({int(x["port"]) for x in response.json().get("listeners", []) if x.get("protocol") == "mqtt"})
