"""A small client of Alertmanager's API v2: post alerts, create, list and expire
silences.

The standard library's HTTP client run in a thread: a request every few seconds does
not need an async HTTP stack, and it keeps the project's dependencies as they are.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class AlertmanagerError(Exception):
    """A request failed. ``retriable``: unreachable, timed out or a server error (try
    again later); otherwise Alertmanager refused the request itself (a 4xx)."""

    def __init__(self, url: str, detail: str, retriable: bool) -> None:
        super().__init__(f"Alertmanager {url}: {detail}")
        self.url = url
        self.retriable = retriable


class Alertmanager:
    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace").strip()
            raise AlertmanagerError(
                self.url, f"{method} {path}: HTTP {exc.code} {detail}", exc.code >= 500
            ) from None
        except (OSError, TimeoutError) as exc:  # URLError is an OSError
            raise AlertmanagerError(self.url, f"{method} {path}: {exc}", True) from None
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            detail = f"{method} {path}: not JSON: {text[:80]!r}"
            raise AlertmanagerError(self.url, detail, False) from None

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self._request, method, path, body)

    async def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        await self.call("POST", "/api/v2/alerts", alerts)

    async def alerts(self, active_only: bool = True) -> list[dict[str, Any]]:
        query = "?active=true&silenced=true&inhibited=true&unprocessed=true"
        if not active_only:
            query = ""
        found: list[dict[str, Any]] = await self.call("GET", "/api/v2/alerts" + query)
        return found

    async def post_silence(self, silence: dict[str, Any]) -> str:
        answer = await self.call("POST", "/api/v2/silences", silence)
        return str(answer["silenceID"])

    async def silences_for(self, label: str, value: str) -> list[dict[str, Any]]:
        """The silences, active or pending, whose matchers include ``label="value"``."""
        query = urllib.parse.urlencode({"filter": f'{label}="{value}"'})
        found = await self.call("GET", f"/api/v2/silences?{query}")
        return [s for s in found or [] if s.get("status", {}).get("state") != "expired"]

    async def expire_silence(self, silence_id: str) -> None:
        await self.call("DELETE", f"/api/v2/silence/{urllib.parse.quote(silence_id)}")
