"""The device's HTTP transport: keep-alive, a stale connection reopened once, timeouts, refusals."""

import asyncio
import socket

import pytest
from fastapi import FastAPI, Request, Response

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.transport import HttpTransport, TransportError, TransportTimeout
from live_server import LiveServer


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), headers={"X-Seen": "yes"})

    @app.get("/slow")
    async def slow() -> dict:
        await asyncio.sleep(1.0)
        return {"late": True}

    return app


def test_requests_reuse_one_connection_and_survive_a_server_restart():
    with LiveServer(_app()) as server:
        transport = HttpTransport(server.url, timeout_s=5)
        first = transport.request("POST", "/echo", b"abc")
        assert (first.status, first.body, first.headers["x-seen"]) == (200, b"abc", "yes")
        connection = transport._connection
        assert transport.request("POST", "/echo", b"def").body == b"def"
        assert transport._connection is connection  # kept alive
        with pytest.raises(TransportTimeout, match="no answer within 0.2 s"):
            transport.request("GET", "/slow", timeout_s=0.2)
        assert transport.request("POST", "/echo", b"again").body == b"again"  # reconnects after a timeout
        port = server.port
    with pytest.raises(TransportError, match="ConnectionRefusedError"):
        transport.request("POST", "/echo", b"x")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(TransportError):
        HttpTransport(f"http://127.0.0.1:{free}").request("GET", "/")
    transport.close()
    assert port


def test_bad_urls():
    with pytest.raises(EdgesplitError, match="server URL must look like http://HOST:PORT, got 'localhost:8700'"):
        HttpTransport("localhost:8700")
