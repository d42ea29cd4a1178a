"""The edge server: one model, any tail, dynamic batching, a binary frame in and a frame out.

    POST /v1/infer   body: one frame (docs/wire.md); answer: a frame with the model's output (named tensors;
                     a detector's: the boxes, scores and labels of the request's image)
    POST /v1/probe   body: any bytes (at most 1 MiB); answer 204 with the same timing and load headers,
                     so a device that runs locally can still measure its uplink
    GET  /v1/model   model id, input shape, normalisation, and the cuts a client may send
    GET  /v1/profile the server's own latency profile (``edgesplit serve --profile``), for clients to plan with
    GET  /healthz    liveness and the current load
    GET  /metrics    Prometheus text

Every answer to /v1/infer carries the server's timings in ``Server-Timing`` (recv: first to last body
byte; queue; compute) and its load in ``Edgesplit-Load`` (:class:`edgesplit.load.LoadReport` as JSON: how long
a request arriving now would wait, the queue length, the max batch size), so a client can measure its
uplink at the receiver and decide. A bad frame
is answered 4xx with a message naming the problem (``FrameError.status``); another Content-Type than a
frame's 415; a body silent for ``body_timeout_s`` 408 (and the connection closed); a full queue 503; a
failure of the model 500 with an id to find its traceback in the server's log, never the exception's
text. The limits that act before a request reaches the app are in :mod:`edgesplit.runtime.http_edge`.
The tails run on a backend (:mod:`edgesplit.runtime.backends`): in this process, or on Ray Serve
replicas (:mod:`edgesplit.runtime.ray_backend`), where no replica able to take a request is a 503 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from edgesplit.wire import (FRAME_TYPE, OUTPUT_CUT, Frame, Limits, decode_frame, encode_tensors, flatten_tree,
                            is_raw_uncompressed)
from edgesplit.errors import FrameError
from edgesplit.profile import Profile
from edgesplit.runtime.backends import Backend, BackendUnavailable, InProcessBackend
from edgesplit.runtime.batcher import Arrival, QueueFull
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.runtime.metrics import Metrics

MAX_PROBE_BYTES = 1024 * 1024
# frames up to this size, raw and uncompressed, are decoded on the event loop (a copy and a CRC: ~40 µs for
# 5 KiB); larger, compressed or JPEG ones in a worker thread, so the loop keeps answering meanwhile
DECODE_ON_LOOP_MAX_BYTES = 64 * 1024
logger = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


@dataclass(frozen=True)
class Received:
    body: bytearray
    recv_s: float  # from the first body chunk's arrival to the last's
    after_first: int  # bytes that arrived after the first chunk: over recv_s, the uplink's goodput

    def timing(self) -> str:
        return f'recv;dur={self.recv_s * 1e3:.3f};desc="{self.after_first} bytes after the first chunk"'


async def receive(request: Request, limit: int, timeout_s: float, arrival: Arrival | None = None) -> Received:
    """Read the body, stamping when its first and last chunks arrived (and telling ``arrival`` each);
    :class:`BodyTimeout` when no chunk came for ``timeout_s``."""
    declared = _content_length(request)
    if declared is not None and declared > limit:  # refused before a byte of it is read
        raise BodyTooLarge(f"body of {declared} bytes exceeds {limit} bytes")
    # one buffer, grown in place (mremap once large), goes back to the OS when dropped: once 10 stalled 60 MB
    # uploads were dropped, the server's RSS was within 10 MiB of where it started; kept as chunks, 64 MiB above
    data = bytearray()
    first, last = None, None
    more = True
    while more:
        try:
            message = await asyncio.wait_for(request.receive(), timeout_s)
        except asyncio.TimeoutError:
            raise BodyTimeout(f"the body stopped arriving: no bytes for {timeout_s:g} s after {len(data)} "
                              f"(body_timeout_s={timeout_s:g})") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk, more = message.get("body", b""), message.get("more_body", False)
        if not chunk:
            continue
        last = time.perf_counter()
        first = first or (last, len(chunk))
        if len(data) + len(chunk) > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        data += chunk
        if arrival is not None:
            arrival.add(len(chunk))
    if first is None or last is None:
        return Received(b"", 0.0, 0)
    return Received(data, last - first[0], len(data) - first[1])


def _content_length(request: Request) -> int | None:
    """The declared body length, if any (the HTTP parser has already refused one that is not a number)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _decodes_on_loop(body: bytearray) -> bool:
    """A small raw frame, cheap enough to decode on the event loop (its section headers say so)."""
    return len(body) <= DECODE_ON_LOOP_MAX_BYTES and is_raw_uncompressed(body)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.005
    max_body_bytes: int = 64 * 1024 * 1024
    max_queue: int = 64
    header_timeout_s: float = 10.0  # to complete the request headers, from connect or the previous response
    body_timeout_s: float = 10.0  # the longest silence within a body
    keep_alive_timeout_s: float = 5.0  # idle after a response
    max_header_bytes: int = 16 * 1024  # the request line and headers
    max_connections: int = 128


def create_app(engine: TailEngine, config: ServerConfig = ServerConfig(), profile: Profile | None = None,
               backend: Backend | None = None) -> FastAPI:
    """The front end for ``engine``'s model: it validates frames against ``engine`` and runs their tails on
    ``backend`` (default: in this process, on ``engine``; see :mod:`edgesplit.runtime.backends`)."""
    metrics = Metrics()
    expect = engine.expectation(config.max_batch_size)
    limits = Limits(max_body_bytes=min(config.max_body_bytes, expect.max_frame_bytes()))  # no valid frame is longer
    tails: Backend = backend or InProcessBackend(engine, metrics, max_batch_size=config.max_batch_size,
                                                 batch_wait_timeout_s=config.batch_wait_timeout_s,
                                                 max_queue=config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await tails.close()

    app = FastAPI(title="edgesplit edge server", version="1", lifespan=lifespan,
                  description="Runs the tail of a split network from any cut; see docs/wire.md for frames.")

    def load() -> str:
        return tails.report().to_header()

    def refuse(kind: str, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors[kind] += 1
        return JSONResponse({"error": kind, "detail": message}, status_code=status, headers=headers)

    async def decode(body: bytearray) -> Frame:
        if _decodes_on_loop(body):
            return decode_frame(body, limits=limits, expect=expect)
        return await run_in_threadpool(decode_frame, body, limits=limits, expect=expect)

    def timed_out(exc: BodyTimeout) -> JSONResponse:
        """408, and the connection closed: what was left of its body will not be read."""
        return refuse("body_timeout", 408, str(exc), {"Connection": "close"})

    @app.post("/v1/infer", response_class=Response, openapi_extra={
        "requestBody": {"required": True, "content": {FRAME_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": {"content": {FRAME_TYPE: {}}, "description": "a frame with the model's output"},
                      "400": {"description": "malformed frame"}, "408": {"description": "the body stopped arriving"},
                      "409": {"description": "another model"}, "413": {"description": "too large"},
                      "415": {"description": "not a frame's Content-Type"},
                      "422": {"description": "not a cut of this model"}, "500": {"description": "the model failed"},
                      "503": {"description": "queue full, or no replica available"}}})
    async def infer(request: Request) -> Response:
        """Run the model from the frame's cut to the end; answer its output as a frame: the logits, or every
        tensor of a structured output under its path (``out`` for ``{"out": masks}``)."""
        content_type = request.headers.get("content-type")
        if content_type is None or content_type.split(";")[0].strip().lower() != FRAME_TYPE:
            return refuse("unsupported_media_type", 415,
                          f"Content-Type must be {FRAME_TYPE}, got {content_type or 'none'}")
        try:
            with tails.arriving(_content_length(request)) as arrival:  # a partner until submitted
                body = await receive(request, limits.max_body_bytes, config.body_timeout_s, arrival)
                received = time.perf_counter()
                frame = await decode(body.body)
        except BodyTooLarge:
            return refuse("too_large", 413, f"body exceeds max_body_bytes={limits.max_body_bytes}")
        except BodyTimeout as exc:
            return timed_out(exc)
        except ClientDisconnect:  # the device gave up (its deadline) while uploading: nobody to answer
            return refuse("client_disconnected", 400, "the client went away before its body arrived")
        except FrameError as exc:
            return refuse("bad_frame", exc.status, str(exc))
        tensors = tuple(t.array for t in frame.tensors)  # in the order they cross the cut
        try:
            result = await tails.submit(frame.cut, tensors[0] if len(tensors) == 1 else tensors)
            # post-processing per request, off the event loop (a segmenter's classes, a detector's NMS)
            output = result.output if engine.postprocess is None else await run_in_threadpool(engine.finish,
                                                                                                result.output)
        except QueueFull as exc:
            return refuse("queue_full", 503, str(exc), {"Retry-After": "1"})
        except BackendUnavailable as exc:
            return refuse("backend_unavailable", 503, str(exc), {"Retry-After": "1"})
        except Exception:  # the model failed on this input: log it, answer without its text, keep serving
            error_id = secrets.token_hex(4)
            logger.exception("model error %s (cut %d, shape %s)", error_id, frame.cut,
                             " + ".join(str(t.shape) for t in tensors))
            return refuse("model_error", 500, f"the model failed on this input; the server's log has the "
                                              f"traceback as model error {error_id}")
        metrics.requests[frame.cut] += 1
        metrics.latency.observe(time.perf_counter() - received)
        timing = (f"{body.timing()}, queue;dur={result.queue_s * 1e3:.3f}, "
                  f"compute;dur={result.compute_s * 1e3:.3f}, batch;desc=\"{result.batch_size}\"")
        answer = encode_tensors(flatten_tree(output), model_id=engine.model_id, cut=OUTPUT_CUT)
        return Response(answer, media_type=FRAME_TYPE,
                        headers={"Server-Timing": timing, "Edgesplit-Load": load()})

    @app.post("/v1/probe", status_code=204, response_class=Response,
              responses={408: {"description": "the body stopped arriving"}, 413: {"description": "too large"}})
    async def probe(request: Request) -> Response:
        """Receive and drop up to 1 MiB; answer when its chunks arrived and the current load."""
        try:
            body = await receive(request, MAX_PROBE_BYTES, config.body_timeout_s)
        except BodyTooLarge:
            return refuse("too_large", 413, f"a probe is at most {MAX_PROBE_BYTES} bytes")
        except BodyTimeout as exc:
            return timed_out(exc)
        except ClientDisconnect:
            return refuse("client_disconnected", 400, "the client went away before its body arrived")
        return Response(status_code=204, headers={"Server-Timing": body.timing(), "Edgesplit-Load": load()})

    @app.get("/v1/model")
    async def model() -> dict[str, object]:
        """The model id clients must match, every cut a client may send (id, name, shape), and where the tails
        run (``backend``, ``replicas``)."""
        return {**engine.describe(), **await tails.describe(), "max_batch_size": config.max_batch_size,
                "max_body_bytes": limits.max_body_bytes}

    @app.get("/v1/profile", responses={404: {"description": "started without --profile"}})
    async def own_profile() -> Response:
        """This server's profile of its model, measured on this machine as it serves (see edgesplit profile)."""
        if profile is None:
            return JSONResponse({"error": "no_profile", "detail": "this server was started without --profile"},
                                status_code=404)
        return JSONResponse(profile.to_dict())

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "model_id": engine.model_id.hex(), "load": asdict(tails.report()),
                "compute_s": {str(k): v for k, v in sorted(tails.recent_compute_s().items())}}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        return metrics.render()

    return app
