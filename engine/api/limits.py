"""A cap on request bodies, applied before FastAPI parses them (multipart uploads are spooled to disk otherwise).

A declared Content-Length over the cap is refused at once with 413; a body sent without one (chunked) is counted
as it arrives and cut off with 413 when it passes the cap. The cap is OMNIBRIDGE_MAX_REQUEST_MB."""

from __future__ import annotations

import json


class BodyTooLarge(Exception):
    pass


class RequestSizeLimit:
    """Pure ASGI middleware: `app = RequestSizeLimit(app, max_bytes)`."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send, declared.decode(errors="replace"))
        seen = 0
        started = refused = False

        async def counted_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
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
        except BodyTooLarge:
            if not refused:
                raise

    async def _refuse(self, send, size: str) -> None:
        mb = self.max_bytes / 2**20
        body = json.dumps({"detail": f"request body: {size} bytes is over the limit of {mb:g} MB "
                                     "(OMNIBRIDGE_MAX_REQUEST_MB); send fewer or smaller files per request"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
