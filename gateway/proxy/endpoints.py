"""The one table of model-routed endpoints: what the gateway serves and where each goes.

Every entry is an OpenAI-style POST whose body names a `model`: JSON bodies
carry it as a top-level field, multipart ones as a form field. The
forwarder handles them all the same way; only this table knows the paths.

`upstream` is appended to the provider's `base_url` (".../v1" + "/responses"),
except for `root` entries: vLLM and llama.cpp serve `/tokenize`,
`/detokenize`, `/classify` and `/pooling` at the server's root, not under
`/v1`, so those go to the origin of `base_url`. The gateway answers both
`/v1/NAME` and the root path `/NAME` for them and for rerank and score, as
clients of those servers call either.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the label in metrics and logs, and the name in a provider's `endpoints:`
    upstream: str  # path relative to base_url (or to its origin when `root`)
    multipart: bool = False  # `model` is a form field of multipart/form-data
    root: bool = False  # the upstream serves it at its root, not under base_url's path
    # Answers that carry an id later requests (GET /v1/responses/{id}) refer to.
    remembers_ids: bool = False
    # Answers that report token usage: counted from a side copy (usage.py).
    usage: bool = False


_TABLE = (
    Endpoint("chat/completions", "chat/completions", usage=True),
    Endpoint("completions", "completions", usage=True),
    Endpoint("embeddings", "embeddings", usage=True),
    Endpoint("responses", "responses", remembers_ids=True, usage=True),
    Endpoint("responses/input_tokens", "responses/input_tokens"),
    Endpoint("responses/compact", "responses/compact"),
    Endpoint("messages", "messages", usage=True),
    Endpoint("messages/count_tokens", "messages/count_tokens"),
    Endpoint("rerank", "rerank"),
    Endpoint("score", "score"),
    Endpoint("tokenize", "tokenize", root=True),
    Endpoint("detokenize", "detokenize", root=True),
    Endpoint("classify", "classify", root=True),
    Endpoint("pooling", "pooling", root=True),
    Endpoint("moderations", "moderations"),
    Endpoint("images/generations", "images/generations"),
    Endpoint("images/edits", "images/edits", multipart=True),
    Endpoint("audio/speech", "audio/speech"),
    Endpoint("audio/transcriptions", "audio/transcriptions", multipart=True),
    Endpoint("audio/translations", "audio/translations", multipart=True),
)

ENDPOINTS = MappingProxyType({e.name: e for e in _TABLE})

# Served at the gateway's root too, as the servers that offer them do.
_ROOT_ALIASES = ("rerank", "score", "tokenize", "detokenize", "classify", "pooling")


def gateway_paths() -> list[tuple[str, Endpoint]]:
    """(path on the gateway, endpoint) for every route to register."""
    paths = [(f"/v1/{e.name}", e) for e in _TABLE]
    paths += [(f"/{name}", ENDPOINTS[name]) for name in _ROOT_ALIASES]
    return paths
