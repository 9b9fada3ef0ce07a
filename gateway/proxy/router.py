"""Routing: which provider a request's `model` goes to, and under what name.

`PROVIDER/MODEL` splits at the first `/` only, so
`openrouter/meta-llama/llama-3-8b` goes to `openrouter` as
`meta-llama/llama-3-8b`. A model without a known provider prefix is looked
up in static `models:` lists first (no I/O), then in the providers' fetched
lists (cached). An alias from `aliases:` names several targets, which the
forwarder tries in order (failover before the first byte).
"""

from __future__ import annotations

from ..errors import GatewayError
from ..models import provider_listing
from ..snapshot import ProviderRuntime, Snapshot

Target = tuple[ProviderRuntime, str]


async def route(snapshot: Snapshot, model: str) -> tuple[Target, ...]:
    """The (provider, upstream model name) pairs to try, in order. Raises GatewayError 404."""
    alias = snapshot.config.aliases.get(model)
    if alias is not None:
        return tuple((snapshot.providers[p], m) for p, m in alias)
    return (await route_one(snapshot, model),)


async def route_one(snapshot: Snapshot, model: str) -> Target:
    """Return (provider, model name to send upstream). Raises GatewayError 404."""
    prefix, sep, rest = model.partition("/")
    if sep:
        runtime = snapshot.providers.get(prefix)
        if runtime is not None:
            if not rest:
                raise GatewayError(
                    404,
                    f"The model '{model}' names provider '{prefix}' but no model after the '/'",
                    "model_not_found",
                )
            return runtime, rest
    runtime = snapshot.static_models.get(model)
    if runtime is not None:
        return runtime, model
    found = await provider_listing(snapshot, model)
    if found is not None:
        return found[0], model
    if sep:
        message = (
            f"The model '{model}' does not exist: no provider is named '{prefix}' "
            "and no provider lists this model"
        )
    else:
        message = (
            f"The model '{model}' does not exist: use PROVIDER/MODEL (GET /v1/models lists them)"
        )
    raise GatewayError(404, message, "model_not_found")
