"""HTTPS upstreams (provider_type: openai defaults to one): verified TLS, streamed."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from gateway.proxy.replicas import ReplicaPool
from gateway.proxy.upstream import UpstreamError
from tests.support import stream_chat


async def test_https_upstream_verified_and_streamed(tls_upstream, gateway_factory, monkeypatch):
    # The gateway trusts the system's CAs; SSL_CERT_FILE replaces that bundle
    # for every provider, and makes this test's certificate trusted.
    monkeypatch.setenv("SSL_CERT_FILE", tls_upstream.cert)
    port, seen = tls_upstream.port, tls_upstream.seen
    gw = await gateway_factory(
        f"providers:\n  - name: tls\n    base_url: https://127.0.0.1:{port}/v1\n"
        "    api_key: tls-upstream-key\n"
    )
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # the second request reuses the TLS connection
            assert await stream_chat(s, gw, "tls/m") == (
                b'data: {"content":"secure"}\n\ndata: {"content":" hello"}\n\ndata: [DONE]\n\n'
            )
    assert seen == [("Bearer tls-upstream-key", {"model": "m", "stream": True})] * 2


async def test_untrusted_certificate_is_refused(tls_upstream, gateway_factory):
    port, seen = tls_upstream.port, tls_upstream.seen
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


async def test_provider_ca_file_trusts_an_internal_ca_for_that_provider_only(
    tls_upstream, gateway_factory
):
    """`ca_file` adds a CA for one provider: its requests and model listing
    verify; a provider without it, same server, is still refused."""
    cert, port, seen = tls_upstream.cert, tls_upstream.port, tls_upstream.seen
    gw = await gateway_factory(
        f"providers:\n"
        f"  - name: lab\n    base_url: https://127.0.0.1:{port}/v1\n"
        f"    api_key: lab-key\n    ca_file: {cert}\n"
        f"  - name: other\n    base_url: https://127.0.0.1:{port}/v1\n"
        f"    api_key: other-key\n"
    )
    async with aiohttp.ClientSession() as s:
        assert (await stream_chat(s, gw, "lab/m")).endswith(b"data: [DONE]\n\n")
        # The models listing goes through the other client (aiohttp's).
        async with s.get(f"{gw.base_url}/models") as r:
            ids = [m["id"] for m in (await r.json())["data"]]
        assert "lab/tls-model" in ids
        assert not any(i.startswith("other/") for i in ids)
        async with s.post(f"{gw.base_url}/chat/completions", json={"model": "other/m"}) as r:
            assert r.status == 502
    assert [auth for auth, _ in seen] == ["Bearer lab-key"]


async def test_a_discovered_replica_verifies_the_certificate_for_its_name(tls_upstream):
    """DNS discovery dials an address; TLS must still check the certificate
    against the provider's host name (ReplicaPool.server_name), not the
    address. The certificate here is for 127.0.0.1 only: dialled with its
    address as the name it verifies, with another name it must not."""
    tls = ssl.create_default_context(cafile=tls_upstream.cert)
    pools = [
        ReplicaPool("127.0.0.1", tls_upstream.port, tls, 1, 2.0, server_name=name)
        for name in (None, "replica.example.test")
    ]
    try:
        conn = await pools[0].acquire()  # no name: the address, which the cert names
        pools[0].release(conn, reuse=False)
        with pytest.raises(UpstreamError) as info:
            await pools[1].acquire()
        assert info.value.kind == "connect"
        assert "replica.example.test" in str(info.value) or "mismatch" in str(info.value).lower()
    finally:
        for pool in pools:
            pool.close()
