"""A TCP relay that delays every chunk by a fixed time in each direction.

Kernels without the netem qdisc cannot add base delay to a link, so
:class:`~edgesplit.netem.kernel.KernelLink` adds it here, in user space: each chunk read from one side is
written to the other side ``delay_ms`` after it was read. Reading never waits for writing, so a delayed
chunk does not hold up the next one and a stream keeps its rate, only shifted in time; order is kept. An
end of stream (a half-close) is passed on after the same delay, and a reset on one side drops both.

Chunks wait in memory, and nothing bounds that queue when a receiver reads more slowly than its sender
writes. That is fine where the relay is used, in front of a local edge server and a local client, and it
is the price of never slowing the reader.

Run it alone::

    python -m edgesplit.netem.relay --listen 10.201.0.2:0 --to 127.0.0.1:8000 --delay-ms 20

Once listening it prints one line, ``ready HOST:PORT``, with the port the system chose for port 0.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Sequence

_CHUNK_BYTES = 64 * 1024


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edgesplit.netem.relay",
        description="Relay TCP connections, delaying every chunk by the same time in each direction.",
    )
    parser.add_argument("--listen", required=True, type=_address, help="HOST:PORT to listen on; port 0 picks one")
    parser.add_argument("--to", required=True, type=_address, help="HOST:PORT to forward each connection to")
    parser.add_argument("--delay-ms", required=True, type=_delay_ms, help="delay added in each direction, in ms")
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin closes, so the relay ends with its parent"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.to, args.delay_ms / 1000, watch_stdin=args.watch_stdin))
    except KeyboardInterrupt:
        pass


async def serve(
    listen: tuple[str, int], target: tuple[str, int], delay_s: float, *, watch_stdin: bool = False
) -> None:
    """Relay every connection accepted on ``listen`` to ``target``; print ``ready HOST:PORT`` once
    listening, then run until cancelled or, with ``watch_stdin``, until stdin closes."""

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _relay(reader, writer, target, delay_s)

    server = await asyncio.start_server(relay, *listen)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"ready {host}:{port}", flush=True)
    async with server:
        if watch_stdin:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
        else:
            await server.serve_forever()


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target: tuple[str, int],
    delay_s: float,
) -> None:
    """Both directions of one connection; a reset or failed write on either side drops both."""
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.transport.abort()
        return
    writers = (client_writer, upstream_writer)
    for writer in writers:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    copies = [
        asyncio.ensure_future(_delayed_copy(client_reader, upstream_writer, delay_s)),
        asyncio.ensure_future(_delayed_copy(upstream_reader, client_writer, delay_s)),
    ]
    try:
        await asyncio.gather(*copies)
    except OSError:
        for writer in writers:
            writer.transport.abort()
    finally:
        for copy in copies:
            copy.cancel()
        await asyncio.gather(*copies, return_exceptions=True)
        for writer in writers:
            writer.close()


async def _delayed_copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay_s`` after it was read, then pass on the end of
    the stream; a read error is raised once its delay has passed, like the data before it."""
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[tuple[float, bytes | OSError]] = asyncio.Queue()

    async def read_all() -> None:
        end: bytes | OSError = b""
        try:
            while chunk := await reader.read(_CHUNK_BYTES):
                due.put_nowait((loop.time() + delay_s, chunk))
        except OSError as exc:
            end = exc
        due.put_nowait((loop.time() + delay_s, end))

    reading = asyncio.ensure_future(read_all())
    try:
        while True:
            deadline, item = await due.get()
            await asyncio.sleep(deadline - loop.time())
            if isinstance(item, OSError):
                raise item
            if not item:
                break
            writer.write(item)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    finally:
        reading.cancel()


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 0 to 65535, got {text!r}")
    return host.strip("[]"), int(port)


def _delay_ms(text: str) -> float:
    try:
        delay = float(text)
    except ValueError:
        delay = -1.0
    if not 0 <= delay < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a delay in ms >= 0, got {text!r}")
    return delay


if __name__ == "__main__":
    main()
