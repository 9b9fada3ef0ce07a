"""The admin API over real HTTP: the provider store on YAML, with validation."""

from __future__ import annotations

import asyncio
import os
import subprocess

import aiohttp
import orjson
import pytest
import yaml

from gateway.sealing import write_keypair
from tests.support import self_signed, start_gateway_from, write_config

TOKEN = "admin-token-for-tests"
UPSTREAM_KEY = "upstream-plain-key-123"


@pytest.fixture
async def admin_env(tmp_path, upstream, monkeypatch):
    """A gateway with admin enabled, a seal key, an include dir and one config provider."""
    monkeypatch.setenv("GW_ADMIN_TOKEN", TOKEN)
    cfg = tmp_path / "cfg"
    write_keypair(cfg / "keys")
    (cfg / "providers.d").mkdir(parents=True)
    path = write_config(
        cfg,
        f"""
        include: providers.d
        seal_key_file: keys/seal.key
        admin: {{token: "env:GW_ADMIN_TOKEN"}}
        providers:
          - name: fixed
            base_url: {upstream.base_url}
        """,
    )
    gw = await start_gateway_from(path)
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
    yield gw, session, cfg / "providers.d"
    await session.close()
    await gw.close()


async def call(session, method, url, body=None):
    data = None if body is None else orjson.dumps(body)
    async with session.request(method, url, data=data) as r:
        raw = await r.read()
        return r.status, (orjson.loads(raw) if raw else None)


def new_provider(upstream, **extra) -> dict:
    return {
        "name": "my-vllm",
        "provider_type": "custom",
        "base_url": upstream.base_url,
        "api_key": UPSTREAM_KEY,
        **extra,
    }


async def test_full_lifecycle(admin_env, upstream):
    gw, s, store = admin_env
    admin = f"{gw.url}/admin/providers"

    status, created = await call(s, "POST", admin, new_provider(upstream, models=["m1"]))
    assert status == 201, created
    assert created["api_key"] == "***" and created["source"] == "store"
    assert created["provider_type"] == "custom"

    status, listing = await call(s, "GET", admin)
    names = {p["name"]: p for p in listing["providers"]}
    assert names["my-vllm"]["api_key"] == "***"
    assert names["fixed"]["source"] == "config" and names["fixed"]["api_key"] is None
    assert UPSTREAM_KEY not in orjson.dumps(listing).decode()

    # On disk: a readable file holding a sealed value, never the plain text.
    text = (store / "my-vllm.yaml").read_text()
    on_disk = yaml.safe_load(text)
    assert on_disk["api_key"].startswith("sealed:v1:")
    assert UPSTREAM_KEY not in text
    assert on_disk["provider_type"] == "custom"

    # Routable at once (the response came after the reload), streaming.
    upstream.replay([b"data: a\n\n", b"data: [DONE]\n\n"])
    async with (
        aiohttp.ClientSession() as c,
        c.post(
            f"{gw.base_url}/chat/completions", json={"model": "my-vllm/m1", "stream": True}
        ) as r,
    ):
        assert r.status == 200 and await r.read() == b"data: a\n\ndata: [DONE]\n\n"
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"

    # A restart (a new gateway on the same files) still has it.
    gw2 = await start_gateway_from(gw.config_path)
    try:
        status, one = await call(s, "GET", f"{gw2.url}/admin/providers/my-vllm")
        assert status == 200 and one["base_url"] == upstream.base_url
    finally:
        await gw2.close()

    # Replace without a key keeps the stored key; "***" too.
    for key in (None, "***"):
        body = new_provider(upstream, models=["m1", "m2"])
        body.pop("api_key") if key is None else body.update(api_key=key)
        status, updated = await call(s, "PUT", f"{admin}/my-vllm", body)
        assert status == 200, updated
        assert updated["models"] == ["m1", "m2"] and updated["api_key"] == "***"
        assert yaml.safe_load((store / "my-vllm.yaml").read_text())["api_key"] == on_disk["api_key"]
    async with (
        aiohttp.ClientSession() as c,
        c.post(f"{gw.base_url}/chat/completions", json={"model": "my-vllm/m2"}) as r,
    ):
        assert r.status == 200
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"

    # A new key replaces it.
    status, _ = await call(s, "PUT", f"{admin}/my-vllm", new_provider(upstream, api_key="rotated"))
    assert status == 200
    async with (
        aiohttp.ClientSession() as c,
        c.post(f"{gw.base_url}/chat/completions", json={"model": "my-vllm/x"}) as r,
    ):
        assert r.status == 200
    assert upstream.requests[-1].headers["Authorization"] == "Bearer rotated"

    status, _ = await call(s, "DELETE", f"{admin}/my-vllm")
    assert status == 204
    assert not (store / "my-vllm.yaml").exists()
    status, _ = await call(s, "GET", f"{admin}/my-vllm")
    assert status == 404
    async with (
        aiohttp.ClientSession() as c,
        c.post(f"{gw.base_url}/chat/completions", json={"model": "my-vllm/x"}) as r,
    ):
        assert r.status == 404


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": None}, "name"),
        ({"name": "admin"}, "name"),
        ({"provider_type": "azure"}, "provider_type"),
        ({"base_url": "ftp://x/v1"}, "base_url"),
        ({"base_url": None}, "base_url"),
        ({"headers": {"Authorization": "x"}}, "headers.Authorization"),
        ({"headers": "x"}, "headers"),
        ({"models": [1]}, "models"),
        ({"timeouts": {"connect": -1}}, "timeouts.connect"),
        ({"api_key": ""}, "api_key"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file"),  # and http:// anyway
        ({"proxy": "socks5://10.0.0.1:1080"}, "proxy"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_validation_errors_are_422_naming_the_field(admin_env, upstream, change, field):
    gw, s, store = admin_env
    body = {k: v for k, v in {**new_provider(upstream), **change}.items() if v is not None}
    status, out = await call(s, "POST", f"{gw.url}/admin/providers", body)
    assert status == 422, out
    assert out["error"]["field"] == field
    assert {"message", "type", "code"} <= out["error"].keys()
    assert list(store.iterdir()) == []


async def test_conflicts(admin_env, upstream):
    gw, s, _ = admin_env
    admin = f"{gw.url}/admin/providers"
    assert (await call(s, "POST", admin, new_provider(upstream)))[0] == 201
    status, out = await call(s, "POST", admin, new_provider(upstream))
    assert status == 409 and out["error"]["code"] == "duplicate_name"
    status, out = await call(s, "POST", admin, new_provider(upstream, name="fixed"))
    assert status == 409
    for method in ("PUT", "DELETE"):
        status, out = await call(s, method, f"{admin}/fixed", new_provider(upstream, name="fixed"))
        assert status == 409 and out["error"]["code"] == "read_only_provider"


async def test_auth(admin_env):
    gw, _, _ = admin_env
    async with aiohttp.ClientSession() as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with c.get(f"{gw.url}/admin/providers", headers=headers) as r:
                assert r.status == 401
                assert TOKEN not in await r.text()


async def test_read_only_mode(tmp_path, upstream, monkeypatch):
    monkeypatch.setenv("GW_ADMIN_TOKEN", TOKEN)
    cfg = tmp_path / "ro"
    (cfg / "providers.d").mkdir(parents=True)
    path = write_config(
        cfg,
        f"""
        include: providers.d
        admin: {{token: "env:GW_ADMIN_TOKEN", writable: false}}
        providers:
          - name: fixed
            base_url: {upstream.base_url}
        """,
    )
    gw = await start_gateway_from(path)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            status, out = await call(s, "POST", f"{gw.url}/admin/providers", new_provider(upstream))
            assert status == 409 and out["error"]["code"] == "read_only"
            assert (await call(s, "GET", f"{gw.url}/admin/providers"))[0] == 200
    finally:
        await gw.close()


def make_unwritable(directory) -> callable:
    """Make `directory` unwritable even for root (which ignores permissions)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        return lambda: directory.chmod(0o700)
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"as root, needs chattr +i to make a directory unwritable: {done.stderr}")
    return lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)


async def test_unwritable_directory_is_409(admin_env, upstream):
    gw, s, store = admin_env
    undo = make_unwritable(store)
    try:
        status, out = await call(s, "POST", f"{gw.url}/admin/providers", new_provider(upstream))
        assert status == 409 and out["error"]["code"] == "store_not_writable"
        assert "not writable" in out["error"]["message"]
    finally:
        undo()
    assert list(store.iterdir()) == []


async def test_admin_disabled_without_token(gateway):
    async with aiohttp.ClientSession() as c, c.get(f"{gateway.url}/admin/providers") as r:
        assert r.status == 404


async def test_upstream_models_and_verify(admin_env, upstream_factory):
    gw, s, _ = admin_env
    up = await upstream_factory(models=["alpha", "beta"])
    assert (await call(s, "POST", f"{gw.url}/admin/providers", new_provider(up)))[0] == 201
    status, listing = await call(s, "GET", f"{gw.url}/admin/providers/my-vllm/models")
    assert status == 200 and [m["id"] for m in listing["data"]] == ["alpha", "beta"]
    status, result = await call(s, "POST", f"{gw.url}/admin/providers/my-vllm/verify")
    assert status == 200 and result == {"valid": True, "model": "alpha"}
    assert up.requests[-1].json()["model"] == "alpha"

    # An upstream failure is a 502 with the upstream's status and message.
    up.models = None

    async def denied(request):
        from aiohttp import web

        return web.json_response({"error": {"message": "bad key"}}, status=401)

    up.handler = denied
    status, out = await call(s, "GET", f"{gw.url}/admin/providers/my-vllm/models")
    assert status == 502
    assert out["error"]["upstream_status"] == 401 and "bad key" in out["error"]["upstream_body"]
    assert UPSTREAM_KEY not in orjson.dumps(out).decode()
    status, result = await call(s, "POST", f"{gw.url}/admin/providers/my-vllm/verify")
    assert status == 200 and result["valid"] is False and "401" in result["error"]


async def test_ten_concurrent_writes_leave_a_consistent_store(admin_env, upstream):
    gw, s, store = admin_env
    bodies = [new_provider(upstream, name=f"p{i}", api_key=f"key-{i}") for i in range(10)]
    results = await asyncio.gather(
        *(call(s, "POST", f"{gw.url}/admin/providers", b) for b in bodies)
    )
    assert [status for status, _ in results] == [201] * 10
    files = sorted(p.name for p in store.iterdir())
    assert files == sorted(f"p{i}.yaml" for i in range(10))  # no temp files left
    for i in range(10):
        assert yaml.safe_load((store / f"p{i}.yaml").read_text())["name"] == f"p{i}"
    _status, listing = await call(s, "GET", f"{gw.url}/admin/providers")
    assert {p["name"] for p in listing["providers"]} >= {f"p{i}" for i in range(10)}
    # Mixed concurrent updates and deletes stay consistent too.
    ops = [call(s, "DELETE", f"{gw.url}/admin/providers/p{i}") for i in range(5)]
    ops += [
        call(s, "PUT", f"{gw.url}/admin/providers/p{i}", new_provider(upstream, name=f"p{i}"))
        for i in range(5, 10)
    ]
    results = await asyncio.gather(*ops)
    assert [status for status, _ in results] == [204] * 5 + [200] * 5
    assert sorted(p.name for p in store.iterdir()) == sorted(f"p{i}.yaml" for i in range(5, 10))
    live = set(gw.holder.current.providers)
    assert live == {"fixed"} | {f"p{i}" for i in range(5, 10)}


async def test_put_keeps_masked_header_values_and_can_remove_the_key(admin_env, upstream):
    gw, s, store = admin_env
    admin = f"{gw.url}/admin/providers"
    body = new_provider(upstream, headers={"X-Api-Token": "hdr-secret", "X-Title": "demo"})
    status, created = await call(s, "POST", admin, body)
    assert status == 201
    assert created["headers"] == {"X-Api-Token": "***", "X-Title": "demo"}

    # Sending the masked record back unchanged keeps the secret header value.
    echo = {k: created[k] for k in ("name", "provider_type", "base_url", "headers")}
    echo["api_key"] = "***"
    status, _ = await call(s, "PUT", f"{admin}/my-vllm", echo)
    assert status == 200
    on_disk = yaml.safe_load((store / "my-vllm.yaml").read_text())
    assert on_disk["headers"]["X-Api-Token"] == "hdr-secret"
    assert on_disk["api_key"].startswith("sealed:v1:")

    # An explicit null removes the key.
    echo["api_key"] = None
    status, updated = await call(s, "PUT", f"{admin}/my-vllm", echo)
    assert status == 200 and updated["api_key"] is None
    assert "api_key" not in yaml.safe_load((store / "my-vllm.yaml").read_text())
    async with (
        aiohttp.ClientSession() as c,
        c.post(f"{gw.base_url}/chat/completions", json={"model": "my-vllm/m"}) as r,
    ):
        assert r.status == 200
    assert "Authorization" not in upstream.requests[-1].headers
    assert upstream.requests[-1].headers["X-Api-Token"] == "hdr-secret"


async def test_listing_says_whether_writes_are_possible(admin_env, tmp_path, upstream, monkeypatch):
    gw, s, _ = admin_env
    _, listing = await call(s, "GET", f"{gw.url}/admin/providers")
    assert listing["writable"] is True and listing["read_only_reason"] is None
    cfg = tmp_path / "ro2"
    (cfg / "providers.d").mkdir(parents=True)
    path = write_config(
        cfg,
        'include: providers.d\nadmin: {token: "env:GW_ADMIN_TOKEN", writable: false}\n',
    )
    ro = await start_gateway_from(path)
    try:
        _, listing = await call(s, "GET", f"{ro.url}/admin/providers")
        assert listing["writable"] is False and "writable" in listing["read_only_reason"]
    finally:
        await ro.close()


async def test_ca_file_is_stored_shown_and_kept_by_an_edit(admin_env, tmp_path):
    """A CA bundle set through the API is written to the fragment, shown as
    written, and kept by an edit that sends it back (PUT replaces the record;
    the UI sends it back)."""
    gw, s, store = admin_env
    cert, _ = self_signed(tmp_path / "ca")
    body = {"name": "lab", "base_url": "https://lab.internal/v1", "ca_file": cert}
    status, out = await call(s, "POST", f"{gw.url}/admin/providers", body)
    assert status == 201, out
    assert out["ca_file"] == cert
    assert "ca_file: " in (store / "lab.yaml").read_text()
    status, out = await call(s, "GET", f"{gw.url}/admin/providers/lab")
    assert (status, out["ca_file"]) == (200, cert)
    body["models"] = ["m1"]
    status, out = await call(s, "PUT", f"{gw.url}/admin/providers/lab", body)
    assert (status, out["ca_file"], out["models"]) == (200, cert, ["m1"])


async def test_proxy_auth_is_sealed_masked_and_kept(admin_env, upstream):
    """proxy_auth is a secret like api_key: sealed on write, "***" when shown,
    kept when "***" comes back, and USER:PASSWORD is checked before sealing."""
    gw, s, store = admin_env
    body = new_provider(upstream, proxy="http://127.0.0.1:3128", proxy_auth="nouser")
    status, out = await call(s, "POST", f"{gw.url}/admin/providers", body)
    assert (status, out["error"]["field"]) == (422, "proxy_auth")
    assert "nouser" not in out["error"]["message"]
    body["proxy_auth"] = "egress:pass-9c1d"
    status, out = await call(s, "POST", f"{gw.url}/admin/providers", body)
    assert (status, out["proxy_auth"], out["proxy"]) == (201, "***", "http://127.0.0.1:3128")
    stored = (store / "my-vllm.yaml").read_text()
    assert "pass-9c1d" not in stored and "proxy_auth: sealed:v1:" in stored
    sealed = stored.split("proxy_auth: ", 1)[1].split("\n", 1)[0]
    edit = dict(body, proxy_auth="***", models=["m1"])  # what the UI sends back
    status, out = await call(s, "PUT", f"{gw.url}/admin/providers/my-vllm", edit)
    assert (status, out.get("proxy_auth")) == (200, "***"), out
    assert sealed in (store / "my-vllm.yaml").read_text()
    runtime = gw.holder.current.providers["my-vllm"]
    assert runtime.proxy_auth.reveal() == "egress:pass-9c1d"
