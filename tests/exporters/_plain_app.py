"""An unmodified ASGI app: nothing here knows about traced-transport.

Run by uvicorn in its own processes (``_plain_app:app``, with only tests/exporters on the path), so it imports
nothing; tests/exporters/_mw_app.py and the hypercorn and uvicorn integration tests build theirs with ``make_app``.
"""


def make_app(reply):
    """An ASGI app answering every HTTP request with ``reply(scope, body length)``, as text/plain."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = reply(scope, size)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


app = make_app(lambda scope, size: str(size).encode())
