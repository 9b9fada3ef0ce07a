"""Which provider a `model` goes to, and under what name (gateway.proxy.router).

Called directly on a snapshot loaded from a config file: a routing rule is
clearer here than through an HTTP round trip. The providers that fetch their
lists point at a real aiohttp upstream on 127.0.0.1 (tests.support); the
`snapshots` fixture (tests/conftest.py) loads a config text as `gateway serve` does.
"""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.proxy.router import route, route_one


def names(targets) -> list[tuple[str, str]]:
    return [(runtime.name, model) for runtime, model in targets]


async def test_a_provider_prefix_splits_at_the_first_slash_only(snapshots):
    snap = snapshots(
        """
        providers:
          - {name: openrouter, base_url: "http://127.0.0.1:9/v1", models: [x]}
        """
    )
    runtime, model = await route_one(snap, "openrouter/meta-llama/llama-3-8b")
    assert (runtime.name, model) == ("openrouter", "meta-llama/llama-3-8b")


async def test_a_provider_with_nothing_after_the_slash_is_404(snapshots):
    snap = snapshots("providers:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1', models: [m]}\n")
    with pytest.raises(GatewayError) as info:
        await route_one(snap, "a/")
    assert (info.value.status, info.value.code) == (404, "model_not_found")
    assert "names provider 'a' but no model after the '/'" in info.value.message


async def test_a_static_list_routes_unprefixed_models_first_listed_wins(snapshots):
    snap = snapshots(
        """
        providers:
          - {name: a, base_url: "http://127.0.0.1:9/v1", models: [shared, only-a]}
          - {name: b, base_url: "http://127.0.0.1:9/v1", models: [shared, only-b]}
        """
    )
    assert names([await route_one(snap, "shared")]) == [("a", "shared")]
    assert names([await route_one(snap, "only-b")]) == [("b", "only-b")]


async def test_an_unknown_prefix_is_looked_up_whole_in_the_fetched_lists(
    snapshots, upstream_factory
):
    up = await upstream_factory(models=["meta-llama/llama-3-8b"])
    snap = snapshots(f"providers:\n  - {{name: lab, base_url: '{up.base_url}'}}\n")
    # `meta-llama` is no provider: the whole id is a model `lab` lists.
    runtime, model = await route_one(snap, "meta-llama/llama-3-8b")
    assert (runtime.name, model) == ("lab", "meta-llama/llama-3-8b")
    assert len(up.model_list_fetches) == 1


async def test_a_static_list_is_consulted_without_asking_any_upstream(snapshots, upstream):
    snap = snapshots(
        f"""
        providers:
          - {{name: fetching, base_url: "{upstream.base_url}"}}
          - {{name: fixed, base_url: "http://127.0.0.1:9/v1", models: [listed]}}
        """
    )
    assert names([await route_one(snap, "listed")]) == [("fixed", "listed")]
    assert upstream.model_list_fetches == []


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("nope/m", "no provider is named 'nope' and no provider lists this model"),
        ("bare", "use PROVIDER/MODEL (GET /v1/models lists them)"),
    ],
)
async def test_an_unknown_model_is_404_saying_what_to_do(snapshots, model, says):
    snap = snapshots("providers:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1', models: [m]}\n")
    with pytest.raises(GatewayError) as info:
        await route_one(snap, model)
    assert (info.value.status, info.value.code) == (404, "model_not_found")
    assert f"The model '{model}' does not exist" in info.value.message
    assert says in info.value.message


async def test_an_alias_gives_its_targets_in_order_and_a_model_one_target(snapshots):
    snap = snapshots(
        """
        providers:
          - {name: a, base_url: "http://127.0.0.1:9/v1", models: [m]}
          - {name: b, base_url: "http://127.0.0.1:9/v1", models: [m]}
        aliases:
          smart: [b/big, a/org/small]
        """
    )
    assert names(await route(snap, "smart")) == [("b", "big"), ("a", "org/small")]
    assert names(await route(snap, "a/m")) == [("a", "m")]
