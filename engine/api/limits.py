"""Limits on request bodies, applied before FastAPI parses them (multipart uploads are spooled to disk otherwise).

A declared Content-Length over the cap is refused at once with 413; a body sent without one (chunked) is counted
as it arrives and cut off with 413 when it passes the cap. The cap is OMNIBRIDGE_MAX_REQUEST_MB. A client that stops
sending its body for OMNIBRIDGE_REQUEST_TIMEOUT seconds gets 408 and its connection closed, so a stalled upload
does not hold a server slot. (Header size is capped by uvicorn: `h11_max_incomplete_event_size`, see SERVER_LIMITS.)"""

from __future__ import annotations

import asyncio
import json

# uvicorn options of `omnibridge serve` and the demo: the h11 parser (httptools has no header limit), a header
# block of at most 16 KiB, idle keep-alive connections closed after 5 s
SERVER_LIMITS = {"http": "h11", "h11_max_incomplete_event_size": 16 * 1024, "timeout_keep_alive": 5}


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


class RequestSizeLimit:
    """Pure ASGI middleware: `app = RequestSizeLimit(app, max_bytes)`."""

    def __init__(self, app, max_bytes: int, read_timeout: float = 15.0):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send, declared.decode(errors="replace"))
        seen = 0
        started = refused = False

        body_done = False

        async def counted_receive():
            nonlocal seen, refused, body_done
            if body_done:  # later calls wait for a disconnect (e.g. while a streamed answer is sent): no limit
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                if not started and not refused:
                    refused = True
                    await self._send(send, 408, f"request body: nothing arrived for {self.read_timeout:g} s "
                                                "(OMNIBRIDGE_REQUEST_TIMEOUT); send the whole body at once")
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if not started and not refused:  # answer now: the app may turn our exception into a 400
                        refused = True
                        await self._refuse(send, f"more than {self.max_bytes}")
                    raise BodyTooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if refused:  # the 413 went out; whatever the app says after it is dropped
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except (BodyTooLarge, BodyTimeout):
            if not refused:
                raise

    async def _refuse(self, send, size: str) -> None:
        mb = self.max_bytes / 2**20
        await self._send(send, 413, f"request body: {size} bytes is over the limit of {mb:g} MB "
                                    "(OMNIBRIDGE_MAX_REQUEST_MB); send fewer or smaller files per request")

    @staticmethod
    async def _send(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
