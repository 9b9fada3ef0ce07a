"""The `model` form field: found by offset, rewritten without touching the file parts."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.proxy.multipart import MAX_PARTS, find_model, rewrite

BOUNDARY = "----gw-test-boundary-7Yx"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"
# Bytes that look like framing inside a file: CRLFs, dashes, a fake `model`.
AUDIO = b"RIFF\r\n--\r\n" + bytes(range(256)) * 40 + b'name="model"\r\n\r\nfake/one\r\n'


def part(name: str, value: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("model_first", [True, False])
def test_model_is_found_and_only_it_changes(model_first):
    file_part = part("file", AUDIO, "a.wav", "audio/wav")
    model_part = part("model", b"up/whisper-large")
    parts = (model_part, file_part) if model_first else (file_part, model_part)
    body = form(*parts, part("language", b"en"))
    model, start, end = find_model(body, CTYPE)
    assert model == "up/whisper-large"
    out = b"".join(rewrite(body, start, end, "whisper-large"))
    assert out == body.replace(b"\r\n\r\nup/whisper-large\r\n", b"\r\n\r\nwhisper-large\r\n")
    assert AUDIO in out


def test_rewrite_shares_the_file_bytes():
    body = form(part("model", b"up/m"), part("file", AUDIO, "a.wav"))
    _, start, end = find_model(body, CTYPE)
    _, new, after = rewrite(body, start, end, "m")
    assert isinstance(after, memoryview) and after.obj is body
    assert new == b"m"


def test_quoted_boundary_and_utf8_model():
    body = form(part("model", "up/modèle".encode()))
    assert find_model(body, f'multipart/form-data; boundary="{BOUNDARY}"')[0] == "up/modèle"


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [
        (form(part("file", AUDIO, "a.wav")), CTYPE, "missing_model"),
        (form(part("model", b"")), CTYPE, "missing_model"),
        (form(part("model", b"a/b"), part("model", b"c/d")), CTYPE, "invalid_multipart"),
        (form(part("model", b"a/b"))[:-12], CTYPE, "invalid_multipart"),
        (b"not multipart at all", CTYPE, "invalid_multipart"),
        (form(part("model", b"a/b")), "multipart/form-data", "invalid_multipart"),
        (form(part("model", b"a/b")), "application/json", "invalid_content_type"),
        (form(part("model", b"a/b")), None, "invalid_content_type"),
        (form(part("model", b"\xff\xfe")), CTYPE, "invalid_multipart"),
        (form(part("model", b"x" * 5000)), CTYPE, "missing_model"),
    ],
    ids=[
        "no-model",
        "empty-model",
        "two-models",
        "truncated",
        "garbage",
        "no-boundary",
        "json",
        "no-content-type",
        "not-utf8",
        "model-too-long",
    ],
)
def test_bad_bodies_are_400s_naming_the_problem(body, ctype, code):
    with pytest.raises(GatewayError) as info:
        find_model(body, ctype)
    assert info.value.status == 400
    assert info.value.code == code


def test_part_count_is_bounded():
    body = form(*(part(f"f{i}", b"x") for i in range(MAX_PARTS + 1)), part("model", b"a/b"))
    with pytest.raises(GatewayError) as info:
        find_model(body, CTYPE)
    assert "parts" in info.value.message


async def test_real_sdk_multipart_body(tmp_path):
    """The body the OpenAI SDK builds for a transcription, as the gateway sees it."""
    import openai

    seen: dict = {}

    def capture(request):
        seen["body"] = request.read()
        seen["ctype"] = request.headers["content-type"]
        raise openai.APIConnectionError(request=request)

    import httpx2

    client = openai.OpenAI(
        base_url="http://127.0.0.1:9/v1",
        api_key="x",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(capture)),
    )
    with pytest.raises(openai.APIConnectionError):
        client.audio.transcriptions.create(model="up/whisper-1", file=("a.wav", AUDIO))
    model, start, end = find_model(seen["body"], seen["ctype"])
    assert model == "up/whisper-1"
    assert AUDIO in b"".join(rewrite(seen["body"], start, end, "whisper-1"))
