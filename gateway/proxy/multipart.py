"""The `model` field of a multipart/form-data body, found and rewritten in place.

Audio transcription and image edits send `model` as a form field beside a
file of up to 25 MB. The gateway reads the body once (bounded by the body
limit), finds the `model` part's value by its offsets and sends upstream
the bytes before it, the new name, and the bytes after it, as three
buffers: the file parts are never decoded, copied or re-encoded.

The parsing is python-multipart's (Starlette's parser, well kept and
streaming): its callbacks report each part's data as offsets into the
buffer it was fed, which is exactly what an in-place edit needs.
"""

from __future__ import annotations

from collections.abc import Sequence

from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import GatewayError

# A transcription has a handful of fields; thousands of parts is an attack.
MAX_PARTS = 256
MAX_MODEL_BYTES = 1024


def _invalid(message: str) -> GatewayError:
    return GatewayError(400, f"Malformed multipart body: {message}", "invalid_multipart")


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type. Raises GatewayError 400."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise GatewayError(
            400,
            "This endpoint takes multipart/form-data (a file and a `model` field), "
            f"not {ctype.decode('latin-1')[:60] or 'an unlabelled body'}",
            "invalid_content_type",
        )
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise _invalid("the Content-Type has no usable boundary")
    return boundary


class _Scan:
    """Callbacks for one parse: the spans of the `model` part's data."""

    __slots__ = ("done", "field", "found", "headers", "model_parts", "parts", "spans", "value")

    def __init__(self) -> None:
        self.parts = 0
        self.model_parts = 0
        self.field = b""
        self.value = b""
        self.headers: dict[bytes, bytes] = {}
        self.spans: list[tuple[int, int]] | None = None  # the current part's, if `model`
        self.found: list[tuple[int, int]] = []  # the first `model` part's
        self.done = False

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _invalid(f"more than {MAX_PARTS} parts")
        self.headers = {}

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field = self.value = b""

    def headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.spans = None
        if params.get(b"name") == b"model":
            self.model_parts += 1
            if self.model_parts == 1:
                self.spans = self.found

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.spans is not None:
            self.spans.append((start, end))

    def end(self) -> None:
        self.done = True


def find_model(body: bytes, content_type: str | None) -> tuple[str, int, int]:
    """The `model` value and its [start, end) offsets in `body`. Raises GatewayError 400."""
    scan = _Scan()
    parser = MultipartParser(
        boundary_of(content_type),
        {
            "on_part_begin": scan.part_begin,
            "on_header_field": scan.header_field,
            "on_header_value": scan.header_value,
            "on_header_end": scan.header_end,
            "on_headers_finished": scan.headers_finished,
            "on_part_data": scan.part_data,
            "on_end": scan.end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except GatewayError:
        raise
    except Exception as exc:  # python-multipart raises several kinds for bad input
        raise _invalid(str(exc)[:200]) from None
    if not scan.done:
        raise _invalid("the closing boundary is missing (truncated body?)")
    return _model_value(body, scan.model_parts, scan.found)


def _model_value(body: bytes, count: int, spans: list[tuple[int, int]]) -> tuple[str, int, int]:
    if count == 0:
        raise GatewayError(
            400,
            "You must provide a model parameter: a form field `model` with PROVIDER/MODEL",
            "missing_model",
            param="model",
        )
    if count > 1:
        raise _invalid("more than one `model` field")
    # One feed of the whole body: the value is one contiguous span (an empty
    # value has none).
    start = spans[0][0] if spans else 0
    end = spans[-1][1] if spans else 0
    raw = body[start:end]
    if not raw or len(raw) > MAX_MODEL_BYTES:
        raise GatewayError(
            400, "The `model` field must be a non-empty PROVIDER/MODEL", "missing_model"
        )
    try:
        return raw.decode("utf-8"), start, end
    except UnicodeDecodeError:
        raise _invalid("the `model` field is not UTF-8") from None


def rewrite(body: bytes, start: int, end: int, model: str) -> Sequence[bytes | memoryview]:
    """`body` with [start, end) replaced by `model`, as buffers (no copy of the rest)."""
    view = memoryview(body)
    return (view[:start], model.encode("utf-8"), view[end:])
