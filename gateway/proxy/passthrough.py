"""Requests that name no model: the provider-scoped passthrough, and follow-ups by response id.

Passthrough: `/providers/NAME/<path>` goes to provider NAME with any method,
the path and query verbatim and the key swapped. The gateway's `/v1` stands
for the provider's `base_url` (as on the gateway's own `/v1`), so a client
with `base_url=http://gateway/providers/NAME/v1` reaches
`<base_url>/chat/completions`; any other path goes to the root of the
provider's server (`/providers/NAME/tokenize` -> `http://host:port/tokenize`).
Only paths the provider's `passthrough` patterns allow get through.

By response id: `GET`/`DELETE /v1/responses/{id}`, `POST .../cancel` and
`GET .../input_items` carry no model. The provider that created the
response is remembered in this process (a side copy of the first bytes of
each `/v1/responses` answer); an id this process has not seen (another
worker, another replica, a restart) is asked of the providers that serve
Responses, in config order, until one answers other than 404.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import GatewayError
from ..metrics import Metrics
from ..snapshot import ProviderRuntime, Snapshot
from .endpoints import ENDPOINTS
from .forwarder import handle
from .relay import Attempt, Exchange, dispatch
from .request_body import read_body
from .rewrite import request_head

if TYPE_CHECKING:
    from .replicas import Replica

# Encoded separators and dot segments would let a path match one pattern
# here and mean another upstream (`/v1/x/..%2fload_lora_adapter`).
_UNSAFE_PATH = re.compile(r"%(2[eEfF]|5[cC])|\\|//|(^|/)\.\.?(/|$)")
_RESPONSE_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_ID_IN_BODY = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9_-]{1,200})"')
_NO_BODY_METHODS = frozenset(("GET", "HEAD", "DELETE", "OPTIONS"))
# An unknown id is asked of at most this many providers.
MAX_ID_FANOUT = 16
# Upstream requests one by-id call may make, replicas counted: a bound on
# what an unknown id can cost (a provider may list 256 replicas).
MAX_ID_ASKS = 64
_SNIFF_BYTES = 4096


class ResponseOwners:
    """response id -> provider name, the most recent `capacity` of them."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._owners: OrderedDict[str, str] = OrderedDict()

    def get(self, response_id: str) -> str | None:
        return self._owners.get(response_id)

    def remember(self, response_id: str, provider: str) -> None:
        owners = self._owners
        owners[response_id] = provider
        owners.move_to_end(response_id)
        if len(owners) > self.capacity:
            owners.popitem(last=False)

    def sniffer(self):
        """A `relay` side copy: the first "id" in the answer's first bytes.

        A Responses answer starts with its id, as JSON (`{"id": "resp_..."`)
        or as SSE (`response.created` holds the response object first)."""
        seen = bytearray()

        def sniff(runtime: ProviderRuntime, chunk: bytes) -> bool:
            seen.extend(chunk[: _SNIFF_BYTES - len(seen)])
            found = _ID_IN_BODY.search(seen)
            if found is not None:
                self.remember(found.group(1).decode("ascii"), runtime.name)
                return True
            return len(seen) >= _SNIFF_BYTES

        return sniff


def _safe_path(path: str) -> str:
    if not path.startswith("/") or _UNSAFE_PATH.search(path):
        raise GatewayError(
            400,
            "The path has an encoded separator, a '.' or '..' segment or '//': "
            "send it in plain form",
            "invalid_path",
        )
    return path


def upstream_path(runtime: ProviderRuntime, path: str) -> str:
    """The gateway's `/v1...` is the provider's base_url; other paths its server root."""
    if path == "/v1" or path.startswith("/v1/"):
        return runtime.base_path + path[3:]
    return runtime.origin_prefix + path


async def passthrough(
    request: web.Request, snapshot: Snapshot, metrics: Metrics
) -> web.StreamResponse:
    """Forward `/providers/NAME/<path>` to provider NAME, verbatim but for the key."""

    async def run(ex: Exchange, snapshot: Snapshot) -> web.StreamResponse:
        ex.outcome.endpoint = "passthrough"
        name = request.match_info["name"]
        runtime = snapshot.providers.get(name)
        if runtime is None:
            raise GatewayError(404, f"No provider named '{name}'", "provider_not_found")
        raw_path, _, query = request.raw_path.partition("?")
        path = _safe_path(raw_path[len("/providers/") + len(name) :] or "/")
        if not runtime.config.api.allows(path):
            raise GatewayError(
                403,
                f"Provider '{name}' does not allow {path} through the gateway "
                "(add it to the provider's `passthrough` patterns)",
                "path_not_allowed",
            )
        ex.outcome.provider = name
        line = runtime.request_line(request.method, upstream_path(runtime, path), query)
        attempt = await _attempt(ex, snapshot, runtime, line, "passthrough")
        return await dispatch(ex, (attempt,), 1)

    return await handle(request, snapshot, metrics, run)


async def _attempt(
    ex: Exchange, snapshot: Snapshot, runtime: ProviderRuntime, line: bytes, model: str
) -> Attempt:
    request = ex.request
    body = await read_body(request, snapshot.config.limits.max_body_bytes)
    head = request_head(request.raw_headers, runtime, line, ex.rid, _length(request, body))
    if ex.trace is not None:  # the upstream continues the gateway's span, not the client's
        head = ex.trace.upstream_head(head, runtime, None)
    return Attempt(runtime, model, head, body, head_request=request.method == "HEAD")


async def by_response_id(
    request: web.Request, snapshot: Snapshot, metrics: Metrics, owners: ResponseOwners
) -> web.StreamResponse:
    """`/v1/responses/{id}[/cancel|/input_items]` to the provider that made the response."""

    async def run(ex: Exchange, snapshot: Snapshot) -> web.StreamResponse:
        ex.outcome.endpoint = "responses/by_id"
        response_id = request.match_info["id"]
        if not _RESPONSE_ID.match(response_id):
            raise GatewayError(404, "No response with that id", "response_not_found")
        candidates = _candidates(snapshot, owners.get(response_id))
        if not candidates:
            raise GatewayError(404, "No provider serves /v1/responses", "endpoint_not_supported")
        raw_path, _, query = request.raw_path.partition("?")
        tail = raw_path[len("/v1/responses") :]
        body = await read_body(request, snapshot.config.limits.max_body_bytes)
        length = _length(request, body)
        responses = ENDPOINTS["responses"]

        def attempts() -> Iterator[Attempt]:
            for runtime in candidates:
                path = runtime.endpoint_path(responses) + tail
                line = runtime.request_line(request.method, path, query)
                head = request_head(request.raw_headers, runtime, line, ex.rid, length)
                if ex.trace is not None:
                    head = ex.trace.upstream_head(head, runtime, None)
                # A stored response lives on the replica that made it: ask each.
                for replica in _replicas(runtime):
                    yield Attempt(runtime, "other", head, body, replica=replica)

        count = min(sum(len(_replicas(runtime)) for runtime in candidates), MAX_ID_ASKS)
        if count > 1:
            # Found by asking around: remember the one that knew it.
            def found(runtime: ProviderRuntime, chunk: bytes) -> bool:
                owners.remember(response_id, runtime.name)
                return True

            ex.sniff = found
        # A 404 means "not mine": ask the next replica or provider.
        return await dispatch(ex, islice(attempts(), count), count, lambda s: s == 404)

    return await handle(request, snapshot, metrics, run)


def _replicas(runtime: ProviderRuntime) -> Sequence[Replica | None]:
    """The replicas to ask in turn; (None,): the provider's one address (or
    a replica set that knows of one replica at most: it picks)."""
    rs = runtime.replicas
    return rs.replicas if rs is not None and len(rs.replicas) > 1 else (None,)


def _length(request: web.Request, body: bytes) -> int | None:
    return None if not body and request.method in _NO_BODY_METHODS else len(body)


def _candidates(snapshot: Snapshot, owner: str | None) -> list[ProviderRuntime]:
    known = snapshot.providers.get(owner) if owner else None
    if known is not None:
        return [known]
    serving = [r for r in snapshot.providers.values() if r.config.api.serves("responses")]
    return serving[:MAX_ID_FANOUT]
