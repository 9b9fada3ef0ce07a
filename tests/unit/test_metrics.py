"""Metrics figures as data, merged across workers, and the shared board."""

from __future__ import annotations

import logging
import multiprocessing

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from gateway.metrics_board import MetricsBoard


def samples(m: Metrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def busy_metrics(requests: int, reloads: tuple[int, int] = (1, 0)) -> Metrics:
    m = Metrics()
    for i in range(requests):
        m.request_done("up", "m1", 200, 0.02 * (i + 1), 0.01, 100)
    m.request_done("up", "m1", 502, 0.5, None, 0)
    m.overhead.observe(0.0002)
    m.upstream_error("up", "connect")
    m.failover("fast")
    m.stream_started("up")
    m.reload_counts = lambda: reloads
    return m


def test_state_adds_up_figure_by_figure():
    a, b = busy_metrics(3), busy_metrics(2, reloads=(2, 1))
    merged = Metrics()
    merged.add_state(a.state())
    merged.add_state(b.state())
    got = samples(merged)
    up = (("provider", "up"),)
    assert (
        got[("gateway_requests_total", (("model", "m1"), ("provider", "up"), ("status", "200")))]
        == 5
    )
    assert (
        got[("gateway_requests_total", (("model", "m1"), ("provider", "up"), ("status", "502")))]
        == 2
    )
    assert got[("gateway_request_duration_seconds_count", up)] == 7
    assert got[("gateway_time_to_first_byte_seconds_count", up)] == 5
    assert got[("gateway_overhead_seconds_count", ())] == 2
    assert got[("gateway_upstream_errors_total", (("kind", "connect"), ("provider", "up")))] == 2
    assert got[("gateway_inflight_requests", up)] == 2
    assert got[("gateway_forwarded_bytes_total", up)] == 500
    assert got[("gateway_failovers_total", (("alias", "fast"),))] == 2
    assert got[("gateway_config_reloads_total", (("result", "success"),))] == 3
    assert got[("gateway_config_reloads_total", (("result", "failure"),))] == 1
    # Buckets stay cumulative after the merge.
    assert got[("gateway_request_duration_seconds_bucket", (("le", "0.05"), *up))] == 4
    # 0.02 + 0.04 + 0.06, 0.02 + 0.04, and each one's 0.5 s failure
    assert abs(got[("gateway_request_duration_seconds_sum", up)] - 1.18) < 1e-9


def test_render_merges_peers_at_scrape():
    mine, theirs = busy_metrics(3), busy_metrics(4)
    alone = samples(mine)
    mine.peers = lambda: [theirs.state()]
    together = samples(mine)
    key = ("gateway_requests_total", (("model", "m1"), ("provider", "up"), ("status", "200")))
    assert alone[key] == 3
    assert together[key] == 7
    # The worker's own figures are not changed by merging for a scrape.
    assert mine.requests[("up", "m1", "200")] == 3


def test_no_reload_family_without_a_reloader():
    m = Metrics()
    merged = Metrics()
    merged.add_state(m.state())
    assert not any(name.startswith("gateway_config_reloads") for name, _ in samples(merged))


def _publish(board: MetricsBoard, index: int, state: dict) -> None:
    board.write(index, state)


def test_board_is_shared_with_forked_children():
    board = MetricsBoard(2, slot_bytes=1 << 16)
    state = busy_metrics(3).state()
    child = multiprocessing.get_context("fork").Process(target=_publish, args=(board, 1, state))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert board.read(1) == state
    assert board.read(0) is None  # never published


def test_board_read_skips_a_torn_write():
    board = MetricsBoard(1, slot_bytes=1 << 16)
    first, second = busy_metrics(1).state(), busy_metrics(2).state()
    board.write(0, first)
    assert board.read(0) == first
    board._mem[20] ^= 0xFF  # a byte of the payload changes under the reader
    assert board.read(0) == first  # the last whole state it read
    board._last_read.clear()
    assert board.read(0) is None  # a reader that never saw it whole
    board.write(0, second)
    assert board.read(0) == second


def test_board_refuses_a_state_larger_than_its_slot(caplog):
    board = MetricsBoard(1, slot_bytes=256)
    big = busy_metrics(1)
    for i in range(50):
        big.request_done("up", f"model-{i}", 200, 0.1, 0.1, 1)
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        assert board.write(0, big.state()) is False
        assert board.write(0, big.state()) is False
    assert len([r for r in caplog.records if "exceed" in r.getMessage()]) == 1
    assert board.read(0) is None
