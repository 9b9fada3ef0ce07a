"""HTTPS upstreams (provider_type: openai defaults to one): verified TLS, streamed."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import aiohttp
import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


async def start_tls_upstream(cert: str, key: str, seen: list) -> tuple[web.AppRunner, int]:
    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append((request.headers.get("Authorization"), await request.json()))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in ("secure", " hello"):
            await resp.write(b"data: " + orjson.dumps({"content": word}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, runner.addresses[0][1]


async def test_https_upstream_verified_and_streamed(tmp_path, gateway_factory, monkeypatch):
    cert, key = self_signed(tmp_path)
    # The gateway trusts the system's CAs; SSL_CERT_FILE is how an operator
    # adds an internal CA, and how this test makes its own certificate trusted.
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    seen: list = []
    runner, port = await start_tls_upstream(cert, key, seen)
    try:
        gw = await gateway_factory(
            f"providers:\n  - name: tls\n    base_url: https://127.0.0.1:{port}/v1\n"
            "    api_key: tls-upstream-key\n"
        )
        async with aiohttp.ClientSession() as s:
            for _ in range(2):  # the second request reuses the TLS connection
                async with s.post(
                    f"{gw.base_url}/chat/completions", json={"model": "tls/m", "stream": True}
                ) as r:
                    assert r.status == 200
                    body = await r.read()
                assert body == (
                    b'data: {"content":"secure"}\n\ndata: {"content":" hello"}\n\ndata: [DONE]\n\n'
                )
        assert seen == [("Bearer tls-upstream-key", {"model": "m", "stream": True})] * 2
    finally:
        await runner.cleanup()


async def test_untrusted_certificate_is_refused(tmp_path, gateway_factory, monkeypatch):
    cert, key = self_signed(tmp_path)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    seen: list = []
    runner, port = await start_tls_upstream(cert, key, seen)
    try:
        gw = await gateway_factory(
            f"providers:\n  - name: tls\n    base_url: https://127.0.0.1:{port}/v1\n"
            "    api_key: tls-upstream-key\n"
        )
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{gw.base_url}/chat/completions", json={"model": "tls/m"}) as r,
        ):
            assert r.status == 502
            error = (await r.json())["error"]
        assert error["code"] == "upstream_unreachable"
        assert "CERTIFICATE_VERIFY_FAILED" in error["message"] or "certificate" in error["message"]
        assert seen == []  # the key never went to an unverified server
    finally:
        await runner.cleanup()
