"""OTLP/HTTP endpoints: body limits, gzip, status codes and partial_success as the spec says."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

from aiohttp import web

from ..ingest import otlp
from ..spans import Batch
from ..store.spans import StoreUnavailable

if TYPE_CHECKING:
    from ..agent import Agent

logger = logging.getLogger(__name__)

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
DECODERS: dict[str, Callable[..., Batch]] = {
    # Message content is read from the stored span when a trace is read, not at ingest.
    "traces": partial(otlp.decode_traces, content=False),
    "logs": otlp.decode_logs,
    "metrics": otlp.decode_metrics,
}


class RequestError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# google.rpc.Status codes for the HTTP statuses the endpoints answer with.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 413: 8, 415: 3, 429: 8, 503: 14}


def status_response(
    request: web.Request, status: int, message: str, retry_after: int | None = None
) -> web.Response:
    """An error as OTLP/HTTP wants it: a google.rpc.Status in the request's encoding."""
    code = _GRPC_CODES.get(status, 2)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if media_type(request.headers.get("Content-Type", "")) in PROTOBUF_TYPES:
        text = message.encode("utf-8")
        body = b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
        return web.Response(
            status=status, body=body, content_type="application/x-protobuf", headers=headers
        )
    return web.Response(
        status=status,
        text=json.dumps({"code": code, "message": message, "error": message}),
        content_type="application/json",
        headers=headers,
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, decompressed, refusing more than `limit` bytes before and after."""
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(413, f"body of {request.content_length} bytes exceeds {limit}")
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body exceeds {limit} bytes")
        chunks.append(chunk)
    # One copy of the whole body, of its exact size: growing a buffer chunk by chunk and
    # copying it out held about twice the body at once.
    raw = b"".join(chunks)
    del chunks
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise RequestError(415, f"unsupported Content-Encoding {encoding!r} (use gzip)")
    return gunzip(raw, limit)


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip (several members allowed) without ever holding more than `limit`."""
    out = bytearray()
    rest = data
    while rest:
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += stream.decompress(rest, limit + 1 - len(out))
        except zlib.error as exc:
            raise RequestError(400, f"body is not valid gzip: {exc}") from None
        if len(out) > limit or stream.unconsumed_tail:
            raise RequestError(413, f"decompressed body exceeds {limit} bytes")
        if not stream.eof:
            raise RequestError(400, "gzip body is truncated")
        rest = stream.unused_data
    return bytes(out)


def handler(agent: Agent, signal: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    decode = DECODERS[signal]
    if agent.redactor is not None:
        decode = partial(decode, redactor=agent.redactor)

    async def export(request: web.Request) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        if media_type(content_type) not in (*PROTOBUF_TYPES, "application/json"):
            return status_response(
                request,
                415,
                f"unsupported Content-Type {content_type!r}; "
                "use application/x-protobuf or application/json",
            )
        try:
            # No name holds the body: it is freed once decoded, not when the commit is done.
            try:
                batch = decode(
                    await read_body(request, agent.config.body_limit_bytes), content_type
                )
            except otlp.UnsupportedMediaType as exc:
                raise RequestError(415, str(exc)) from None
            except otlp.DecodeError as exc:
                raise RequestError(400, f"cannot decode {signal} request: {exc}") from None
            try:
                await agent.ingest(batch, signal)
            except StoreUnavailable as exc:
                raise RequestError(503, str(exc), retry_after=exc.retry_after) from None
        except RequestError as exc:
            return status_response(request, exc.status, exc.message, exc.retry_after)
        message = ""
        if batch.rejected:
            shown = "; ".join(f"{r.index}: {r.reason}" for r in batch.rejected[:20])
            more = len(batch.rejected) - 20
            message = f"{len(batch.rejected)} rejected: {shown}" + (
                f"; and {more} more" if more > 0 else ""
            )
        payload, response_type = otlp.encode_response(
            signal, content_type, len(batch.rejected), message
        )
        return web.Response(status=200, body=payload, content_type=response_type)

    return export
