"""The edge server: one model, any tail, dynamic batching, a binary frame in and a frame out.

    POST /v1/infer   body: one frame (docs/wire.md); answer: a frame with the logits
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
is answered 4xx with a message naming the problem (``FrameError.status``); a full queue 503.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from edgesplit.codec import OUTPUT_CUT, Limits, decode_frame, encode_frame
from edgesplit.errors import FrameError
from edgesplit.profile import Profile
from edgesplit.runtime.batcher import Batcher, QueueFull
from edgesplit.runtime.tail_engine import TailEngine
from edgesplit.runtime.metrics import Metrics

FRAME_TYPE = "application/vnd.edgesplit.frame"
MAX_PROBE_BYTES = 1024 * 1024


class BodyTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Received:
    body: bytes
    recv_s: float  # from the first body chunk's arrival to the last's
    after_first: int  # bytes that arrived after the first chunk: over recv_s, the uplink's goodput

    def timing(self) -> str:
        return f'recv;dur={self.recv_s * 1e3:.3f};desc="{self.after_first} bytes after the first chunk"'


async def receive(request: Request, limit: int) -> Received:
    """Read the body, stamping when its first and last chunks arrived."""
    chunks: list[bytes] = []
    size, first, last = 0, None, None
    async for chunk in request.stream():
        if not chunk:
            continue
        last = time.perf_counter()
        first = first or (last, len(chunk))
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    if first is None or last is None:
        return Received(b"", 0.0, 0)
    return Received(b"".join(chunks), last - first[0], size - first[1])


@dataclass(frozen=True)
class ServerConfig:
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.005
    max_body_bytes: int = 64 * 1024 * 1024
    max_queue: int = 64


def create_app(engine: TailEngine, config: ServerConfig = ServerConfig(), profile: Profile | None = None) -> FastAPI:
    metrics = Metrics()
    limits = Limits(max_body_bytes=config.max_body_bytes)
    expect = engine.expectation(config.max_batch_size)
    batcher = Batcher(engine.run, metrics, max_batch_size=config.max_batch_size,
                      batch_wait_timeout_s=config.batch_wait_timeout_s, max_queue=config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.close()

    app = FastAPI(title="edgesplit edge server", version="1", lifespan=lifespan,
                  description="Runs the tail of a split network from any cut; see docs/wire.md for frames.")

    def load() -> str:
        return batcher.report().to_header()

    def refuse(kind: str, status: int, message: str) -> JSONResponse:
        metrics.errors[kind] += 1
        return JSONResponse({"error": kind, "detail": message}, status_code=status)

    @app.post("/v1/infer", response_class=Response, openapi_extra={
        "requestBody": {"required": True, "content": {FRAME_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": {"content": {FRAME_TYPE: {}}, "description": "a frame with the logits"},
                      "400": {"description": "malformed frame"}, "409": {"description": "another model"},
                      "413": {"description": "too large"}, "422": {"description": "not a cut of this model"},
                      "503": {"description": "queue full"}}})
    async def infer(request: Request) -> Response:
        """Run the model from the frame's cut to the end; answer the logits as a frame."""
        batcher.arriving += 1
        try:
            body = await receive(request, limits.max_body_bytes)
        except BodyTooLarge:
            return refuse("too_large", 413, f"body exceeds max_body_bytes={limits.max_body_bytes}")
        except ClientDisconnect:  # the device gave up (its deadline) while uploading: nobody to answer
            return refuse("client_disconnected", 400, "the client went away before its body arrived")
        finally:
            batcher.arriving -= 1
        received = time.perf_counter()
        try:
            frame = decode_frame(body.body, limits=limits, expect=expect)
        except FrameError as exc:
            return refuse("bad_frame", exc.status, str(exc))
        try:
            result = await batcher.submit(frame.cut, frame.array)
        except QueueFull as exc:
            metrics.errors["queue_full"] += 1
            return JSONResponse({"error": "queue_full", "detail": str(exc)}, status_code=503,
                                headers={"Retry-After": "1"})
        except Exception as exc:  # the model failed on this input: report it, keep serving
            return refuse("model_error", 500, f"{type(exc).__name__}: {exc}")
        metrics.requests[frame.cut] += 1
        metrics.latency.observe(time.perf_counter() - received)
        timing = (f"{body.timing()}, queue;dur={result.queue_s * 1e3:.3f}, "
                  f"compute;dur={result.compute_s * 1e3:.3f}, batch;desc=\"{result.batch_size}\"")
        answer = encode_frame(result.logits, model_id=engine.model_id, cut=OUTPUT_CUT)
        return Response(answer, media_type=FRAME_TYPE,
                        headers={"Server-Timing": timing, "Edgesplit-Load": load()})

    @app.post("/v1/probe", status_code=204, response_class=Response, responses={413: {"description": "too large"}})
    async def probe(request: Request) -> Response:
        """Receive and drop up to 1 MiB; answer when its chunks arrived and the current load."""
        try:
            body = await receive(request, MAX_PROBE_BYTES)
        except BodyTooLarge:
            return refuse("too_large", 413, f"a probe is at most {MAX_PROBE_BYTES} bytes")
        except ClientDisconnect:
            return refuse("client_disconnected", 400, "the client went away before its body arrived")
        return Response(status_code=204, headers={"Server-Timing": body.timing(), "Edgesplit-Load": load()})

    @app.get("/v1/model")
    async def model() -> dict[str, object]:
        """The model id clients must match, and every cut a client may send (id, name, shape)."""
        return {**engine.describe(), "max_batch_size": config.max_batch_size,
                "max_body_bytes": config.max_body_bytes}

    @app.get("/v1/profile", responses={404: {"description": "started without --profile"}})
    async def own_profile() -> Response:
        """This server's profile of its model, measured on this machine as it serves (see edgesplit profile)."""
        if profile is None:
            return JSONResponse({"error": "no_profile", "detail": "this server was started without --profile"},
                                status_code=404)
        return JSONResponse(profile.to_dict())

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "model_id": engine.model_id.hex(), "load": asdict(batcher.report()),
                "compute_s": {str(k): v for k, v in sorted(batcher.recent_compute_s.items())}}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        return metrics.render()

    return app
