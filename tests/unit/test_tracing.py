"""gateway/tracing.py: reading the answer's model for gen_ai.response.model."""

from __future__ import annotations

import pytest

from gateway.tracing import _RESPONSE_MODEL, _model_in


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"x","model":"llama-3.1","choices":[]}',
        b'{"model" : "spaced"}',  # not compact: the regular expression reads it
        b'{"model":"a\\"b","x":{"model":"inner"}}',  # an escape: not taken as is
        b'{"model":null,"x":{"model":"later"}}',
        b'{"model":"' + b"x" * 256 + b'"}',  # the longest kept
        b'{"model":"' + b"x" * 257 + b'"}',
        b'{"model":""}',
        b'{"model":"cut off',
        b"no model here",
        'data: {"model":"caf\u00e9"}\n\n'.encode(),
    ],
)
def test_response_model_reads_what_the_regular_expression_reads(body):
    found = _RESPONSE_MODEL.search(body)
    assert _model_in(body) == (None if found is None else found.group(1).decode())
