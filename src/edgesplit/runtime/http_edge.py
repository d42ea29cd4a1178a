"""The HTTP edge: limits a connection meets before the app sees its request.

uvicorn's httptools protocol times nothing out until a request's headers are complete, and bounds no
header's size (httptools buffers a header value whole before it reports it: an 8 MiB header was served).
:class:`EdgeProtocol` adds the two limits that must act before the app runs:

- ``header_timeout_s``: a connection must complete its request line and headers within this, counted
  from connect or from the end of the previous response; else it is closed (slowloris, idle new sockets);
- ``max_header_bytes``: the request line and headers may take this many bytes; the connection is answered
  431 and closed after reading at most that many, however long the header.

uvicorn's own settings cover the rest (:func:`uvicorn_options`): ``timeout_keep_alive`` closes a connection
idle after a response, ``limit_concurrency`` answers 503 beyond ``max_connections``. The body's
inactivity timeout is the app's (``server.receive``): only it knows a request is waiting on its body.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edgesplit.runtime.server import ServerConfig


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a header size limit."""

    def __init__(self, *args: Any, header_timeout_s: float, max_header_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes: int | None = 0  # of the request line and headers so far; None while in a body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser at most what is left of ``max_header_bytes`` while headers are being read."""
        view = memoryview(data)
        while view and not self.transport.is_closing():
            if self._header_bytes is None:
                super().data_received(view)  # type: ignore[arg-type]
                return
            room = self.max_header_bytes - self._header_bytes
            self._header_bytes += min(room, len(view))
            super().data_received(view[:room])  # type: ignore[arg-type]
            if self._header_bytes is not None and self._header_bytes >= self.max_header_bytes:
                self._refuse_headers()
                return
            view = view[room:]

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self._header_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._header_bytes = 0  # what comes next is the next request's

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a pipelined request's headers are already complete
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._await_headers()

    def _await_headers(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self.transport.close)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse_headers(self) -> None:
        """Answer 431 (unless an earlier response is still being written) and close."""
        if self.cycle is None or self.cycle.response_complete:
            message = f"request headers exceed max_header_bytes={self.max_header_bytes}".encode()
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 b"content-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message))
        self.transport.close()


def uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    """The ``uvicorn.run``/``uvicorn.Config`` options that apply ``config``'s connection limits."""
    return {
        "http": functools.partial(EdgeProtocol, header_timeout_s=config.header_timeout_s,
                                  max_header_bytes=config.max_header_bytes),
        "timeout_keep_alive": config.keep_alive_timeout_s,
        # uvicorn refuses a request when its connection count, this one included, reaches the limit
        "limit_concurrency": config.max_connections + 1,
    }
