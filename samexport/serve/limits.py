"""A request body size limit as ASGI middleware: a body over the limit is answered 413 before the
application sees it (at once by its ``Content-Length``, or by counting a chunked body as it
arrives), so an oversized upload never holds more than ``limit`` bytes of the server's memory."""

from __future__ import annotations

import json


async def _send_413(send, limit: int) -> None:
    body = json.dumps({"detail": f"request body too large (limit {limit} bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Wrap an ASGI app so HTTP request bodies over ``limit`` bytes get 413.

    The body is read here (up to the limit) and handed to the app whole: Starlette turns an
    exception raised from inside ``receive`` into a 500, so refusing half-way through the app's
    own read could not answer 413.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await _send_413(send, self.limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_413(send, self.limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: waits for the disconnect, as the server's would

        await self.app(scope, replay, send)
