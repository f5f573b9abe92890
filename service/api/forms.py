"""Reading request bodies by hand, after authentication and with every limit applied.

Routes parse their bodies themselves (instead of declaring ``File``/``Form``/body parameters)
for two reasons: FastAPI reads declared bodies before dependencies run, so an unauthenticated
client could make the server parse a large upload; and the rejections must use the API's one
error shape with the offending field or file named. The OpenAPI schemas of these bodies are
declared with ``openapi_extra`` (see ``multipart_body`` and ``json_body``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.core.errors import ApiError, validation_error

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# Non-file form fields a client may send at most; far more than any route declares.
_MAX_FIELDS = 64


@dataclass(frozen=True)
class UploadedFrame:
    name: str
    data: bytes


@dataclass(frozen=True)
class MultipartBody:
    fields: dict[str, str]
    frames: list[UploadedFrame]


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_frames_form(
    request: Request, *, max_frames: int, max_frame_bytes: int, max_field_bytes: int
) -> MultipartBody:
    """Parse a ``multipart/form-data`` body: ``frames`` files in upload order, other fields as text."""
    if media_type(request) != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected a multipart/form-data body with 'frames' files, got {media_type(request) or 'no content type'!r}",
        )
    try:
        form = await request.form(max_files=max_frames, max_fields=_MAX_FIELDS, max_part_size=max_field_bytes)
    except StarletteHTTPException as exc:
        message = str(exc.detail)
        if "Too many files" in message:
            raise ApiError(
                422,
                "too_many_frames",
                f"a tracklet may have at most {max_frames} frames",
                field="frames",
            ) from None
        raise ApiError(400, "malformed_multipart", f"cannot parse the multipart body: {message}") from None
    try:
        fields: dict[str, str] = {}
        frames: list[UploadedFrame] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "frames":
                    raise ApiError(
                        422,
                        "unexpected_file",
                        f"files are accepted only in the 'frames' field, got one in {key!r}",
                        field=key,
                        file=value.filename,
                    )
                name = value.filename or f"frames[{len(frames)}]"
                if value.size is not None and value.size > max_frame_bytes:
                    raise ApiError(
                        413,
                        "frame_too_large",
                        f"frame {name!r} has {value.size} bytes; the limit is {max_frame_bytes} bytes per frame",
                        field="frames",
                        file=name,
                    )
                frames.append(UploadedFrame(name=name, data=await value.read()))
            else:
                if key == "frames":
                    raise ApiError(
                        422,
                        "invalid_frame",
                        "'frames' must be uploaded files (curl -F frames=@crop.jpg), not text values",
                        field="frames",
                    )
                if key in fields:
                    raise ApiError(422, "duplicate_field", f"field {key!r} is given more than once", field=key)
                fields[key] = value
        return MultipartBody(fields=fields, frames=frames)
    finally:
        await form.close()


def check_frame_count(frames: list[UploadedFrame], max_frames: int) -> None:
    if not frames:
        raise ApiError(
            422, "no_frames", "a tracklet needs at least one frame: upload files in the 'frames' field", field="frames"
        )
    if len(frames) > max_frames:
        raise ApiError(
            422, "too_many_frames", f"{len(frames)} frames; a tracklet may have at most {max_frames}", field="frames"
        )


def parse_fields(model: type[M], fields: dict[str, Any]) -> M:
    """Validate form fields against ``model``; empty strings count as absent (curl -F camera=)."""
    data = {k: v for k, v in fields.items() if not (isinstance(v, str) and v == "")}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(list(exc.errors())) from None


class ArrayCounter:
    """Counts the elements of a top-level JSON array while its bytes stream in, without parsing.

    Vectorised over each chunk with numpy (a byte-by-byte loop would cost seconds for a 64 MB
    body): backslash runs decide which quotes are escaped, quotes decide what is inside strings,
    brackets outside strings give the nesting depth, and commas at depth 1 separate elements.
    State carried between chunks: inside a string or not, the trailing backslash run, the depth.
    Invalid JSON is counted approximately; the parser rejects it afterwards anyway.
    """

    def __init__(self) -> None:
        self.in_string = False
        self.backslashes = 0  # length of the backslash run that ended the previous chunk
        self.depth = 0
        self.separators = 0  # commas at depth 1: elements - 1 for a non-empty array

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        a = np.frombuffer(chunk, dtype=np.uint8)
        n = a.size
        backslash = a == 0x5C
        positions = np.arange(n)
        # Index of the last non-backslash byte at or before i (-1 when the run reaches the start).
        last_plain = np.maximum.accumulate(np.where(backslash, -1, positions))
        run_before = np.empty(n, dtype=np.int64)  # backslashes directly before byte i
        run_before[0] = self.backslashes
        run_before[1:] = positions[:-1] - last_plain[:-1]
        # A run that starts at the chunk's beginning continues the previous chunk's run.
        run_before[1:] += np.where(last_plain[:-1] == -1, self.backslashes, 0)
        quote = (a == 0x22) & (run_before % 2 == 0)
        toggles = np.cumsum(quote)
        inside = (toggles + int(self.in_string)) % 2 == 1
        outside = ~inside & ~quote
        opens = outside & ((a == 0x5B) | (a == 0x7B))
        closes = outside & ((a == 0x5D) | (a == 0x7D))
        depth = self.depth + np.cumsum(opens.astype(np.int64) - closes.astype(np.int64))
        self.separators += int(np.count_nonzero(outside & (a == 0x2C) & (depth == 1)))
        self.depth = int(depth[-1])
        self.in_string = (int(self.in_string) + int(toggles[-1])) % 2 == 1
        tail = n - 1 - int(last_plain[-1])
        self.backslashes = tail + (self.backslashes if last_plain[-1] == -1 else 0)


async def read_json(request: Request, adapter: TypeAdapter[T], max_items: int | None = None) -> T:
    """Parse a JSON body with ``adapter``; wrong content type 415, malformed or invalid 422.

    ``max_items``: the body is a JSON array that may hold at most this many elements; more are
    refused (413 ``too_many_records``) as soon as the excess streams in, before anything is parsed.
    """
    if media_type(request) != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected an application/json body, got {media_type(request) or 'no content type'!r}",
        )
    if max_items is None:
        body = await request.body()
    else:
        counter = ArrayCounter()
        chunks: list[bytes] = []
        async for chunk in request.stream():
            counter.feed(chunk)
            if counter.separators >= max_items:
                raise ApiError(
                    413,
                    "too_many_records",
                    f"more than {max_items} records; send at most {max_items} per request",
                    field="records",
                    headers={"Connection": "close"},  # the rest of the body is not read
                )
            chunks.append(chunk)
        body = b"".join(chunks)
    try:
        # A large bulk import takes a while to parse: keep the event loop free meanwhile.
        return await run_in_threadpool(adapter.validate_json, body)
    except ValidationError as exc:
        errors = list(exc.errors())
        if errors and errors[0].get("type") == "json_invalid":
            raise ApiError(422, "invalid_json", f"the body is not valid JSON: {errors[0].get('msg')}") from None
        raise validation_error(errors) from None


def multipart_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """``openapi_extra`` describing a multipart body with the given form properties."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    # Unknown fields are refused (422), so the schema admits none.
                    "schema": {
                        "type": "object",
                        "properties": properties,
                        "required": required,
                        "additionalProperties": False,
                    }
                }
            },
        }
    }


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


FRAMES_PROPERTY: dict[str, Any] = {
    "type": "array",
    "items": {"type": "string", "format": "binary"},
    "description": "person crops in time order (JPEG, PNG or WebP, checked by content)",
}
