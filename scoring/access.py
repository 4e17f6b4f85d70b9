"""Access and request limits of the scoring service, each usable (and tested) on its own.

`TokenAuth` (bearer tokens, constant-time compare, wrong tokens throttled per client address) and
`charge_quota` (a token's molecules per window, `RateLimiter`) are FastAPI dependencies' parts;
`BodyLimitMiddleware` bounds headers, body size and the time a body may take to arrive;
`SecurityHeadersMiddleware` gives every answer a strict Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request

__all__ = ["MAX_HEADER_BYTES", "SECURITY_HEADERS", "BodyLimitMiddleware", "RateLimiter", "SecurityHeadersMiddleware",
           "TokenAuth", "charge_quota"]

MAX_HEADER_BYTES = 16 * 1024  # request line and headers together


@dataclass
class RateLimiter:
    """Per-token token bucket of molecules: ``capacity`` per ``window`` seconds, refilled continuously."""

    capacity: int
    window: float
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # token -> (level, time)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, token: str, n: int, now: float | None = None) -> float:
        """Seconds until n molecules could be taken (0: now), taking nothing."""
        now = time.monotonic() if now is None else now
        rate = self.capacity / self.window
        with self._lock:
            level, then = self._buckets.get(token, (float(self.capacity), now))
            level = min(float(self.capacity), level + (now - then) * rate)
        return max(0.0, (n - level) / rate)

    def prune(self, now: float | None = None, keep: int = 10_000) -> None:
        """Forget buckets that have refilled, once there are more than ``keep`` (one per client address)."""
        if len(self._buckets) <= keep:
            return
        now = time.monotonic() if now is None else now
        rate = self.capacity / self.window
        with self._lock:
            self._buckets = {k: (level, then) for k, (level, then) in self._buckets.items()
                             if level + (now - then) * rate < self.capacity}

    def refund(self, token: str, n: int) -> None:
        """Give back n molecules taken for a request that did not score them (never above capacity)."""
        with self._lock:
            if token in self._buckets and n > 0:
                level, then = self._buckets[token]
                self._buckets[token] = (min(float(self.capacity), level + n), then)

    def take(self, token: str, n: int, now: float | None = None) -> float:
        """Take n molecules; returns 0 when allowed, else the seconds to wait before asking again."""
        now = time.monotonic() if now is None else now
        rate = self.capacity / self.window
        with self._lock:
            level, then = self._buckets.get(token, (float(self.capacity), now))
            level = min(float(self.capacity), level + (now - then) * rate)
            if n <= level:
                self._buckets[token] = (level - n, now)
                return 0.0
            self._buckets[token] = (level, now)
            return (n - level) / rate


class TokenAuth:
    """FastAPI dependency: the request's bearer token, checked in constant time against every
    known token (401 otherwise); returns the token, which keys the rate limit.

    Wrong tokens are throttled per client address: after ``max_failures`` within ``failure_window``
    seconds (refilled continuously), every request from that address answers 429 with Retry-After
    until the window allows another try, whatever its token. Behind a reverse proxy on loopback,
    uvicorn takes the address from X-Forwarded-For.
    """

    def __init__(self, tokens: frozenset[str] | set[str] | list[str], *, max_failures: int = 10,
                 failure_window: float = 60.0) -> None:
        self._tokens = [t.encode() for t in tokens]
        self._failures = RateLimiter(max_failures, failure_window)

    def __call__(self, request: Request) -> str:
        client = request.client.host if request.client else ""
        return self.check(request.headers.get("authorization", ""), client)

    def check(self, header: str, client: str = "", now: float | None = None) -> str:
        """The token of an ``Authorization`` header value; HTTPException(401) when missing or unknown,
        429 while ``client`` is throttled for wrong tokens."""
        wait = self._failures.wait(client, 1, now)
        if wait > 0:
            retry = math.ceil(wait)
            raise HTTPException(429, f"too many wrong access tokens from this address; try again in {retry} s",
                                headers={"Retry-After": str(retry)})
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "missing access token: send 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})
        given = token.encode()
        # Compare against every token (no early exit), so timing tells nothing about which is close.
        if not any([hmac.compare_digest(given, t) for t in self._tokens]):
            self._failures.take(client, 1, now)
            self._failures.prune(now)
            raise HTTPException(401, "invalid access token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return token


def charge_quota(limiter: RateLimiter, token: str, n: int) -> None:
    """Take n molecules from the token's bucket; HTTPException(429) with Retry-After when it is empty."""
    wait = limiter.take(token, n)
    if wait > 0:
        retry = math.ceil(wait)
        raise HTTPException(429, f"rate limit: at most {limiter.capacity:,} molecules per {limiter.window:g} s "
                                 f"per token; try again in {retry} s", headers={"Retry-After": str(retry)})


class _BodyTooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


class BodyLimitMiddleware:
    """Answers 413 when a request body exceeds ``limit`` bytes (declared or streamed), and 408 when
    it has not arrived ``timeout`` seconds after the app started reading it (a client that declares
    a length and stalls would otherwise hold its connection open for as long as it likes); 431 when
    the headers exceed ``header_limit`` bytes (h11 refuses larger ones only while they are incomplete)."""

    def __init__(self, app: Any, limit: int, timeout: float = 30.0, header_limit: int = 16 * 1024) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout
        self.header_limit = header_limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        if sum(len(k) + len(v) + 4 for k, v in headers) > self.header_limit:
            await _send_json(send, 431, f"request headers too large: the limit is {self.header_limit:,} bytes",
                             close=True)
            return
        declared = dict(headers).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        seen = 0
        started = False
        complete = False  # after the body, receive() waits for a disconnect: no deadline then
        deadline: float | None = None

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, complete, deadline
            if complete:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline if deadline is not None else loop.time() + self.timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise _BodyTimeout from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)
        except _BodyTimeout:
            if not started:
                await _send_json(send, 408, f"request body not received within {self.timeout:g} s",
                                 close=True)

    async def _reject(self, send: Any) -> None:
        await _send_json(send, 413, f"request body too large: the limit is {self.limit:,} bytes; "
                                    "split the molecules over several requests", close=True)


async def _send_json(send: Any, status: int, detail: str, *, close: bool = False) -> None:
    """A JSON error answer ``{"detail": ...}`` sent straight through ASGI (``close``: end the connection)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    """Adds `SECURITY_HEADERS` to every answer: the page may load scripts, styles and data only from
    this origin (images also from ``data:``, the depictions), and no other site may frame it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
