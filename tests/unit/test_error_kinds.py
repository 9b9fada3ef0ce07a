"""Upstream error kinds: one enum whose values are the metrics labels."""

from __future__ import annotations

import orjson
import pytest

from gateway.metrics import Metrics
from gateway.proxy.upstream import ErrorKind, UpstreamError


def test_a_kind_is_its_label_string():
    err = UpstreamError("first_byte_timeout", "no response within 1s")
    assert err.kind is ErrorKind.FIRST_BYTE_TIMEOUT
    assert err.kind == "first_byte_timeout" and f"{err.kind}" == "first_byte_timeout"
    assert UpstreamError(ErrorKind.RESET, "closed").kind is ErrorKind.RESET


def test_an_unknown_kind_is_refused_not_invented():
    with pytest.raises(ValueError):
        UpstreamError("conect", "a typo must not become a new metrics label")


def test_metrics_show_the_plain_value():
    m = Metrics()
    m.upstream_error("up", ErrorKind.CONNECT)
    m.upstream_error("up", "connect")  # a merged worker's figure, read back from JSON
    assert m.upstream_errors == {("up", "connect"): 2}
    text = m.render().decode()
    assert 'gateway_upstream_errors_total{kind="connect",provider="up"} 2.0' in text
    state = orjson.loads(orjson.dumps([[*k, n] for k, n in m.upstream_errors.items()]))
    assert state == [["up", "connect", 2]]
