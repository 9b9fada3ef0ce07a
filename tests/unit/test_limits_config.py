"""`limits:` in the config: the inbound connection limits, their defaults and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Limits, load_config
from gateway.inbound import fd_connection_cap


def load(tmp_path: Path, limits: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(f"limits:\n{limits}")
    return path, load_config(path)


def problems(tmp_path: Path, limits: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, limits)
    return [str(p) for p in info.value.problems]


def test_defaults_are_sane():
    limits = Limits()
    assert limits.head_timeout == 10
    assert limits.body_idle_timeout == 30
    assert limits.keepalive_timeout == 75  # longer than a proxy's 60 s idle timeout
    assert limits.max_connections == 4096


def test_connection_limits_are_read_and_times_may_be_fractions(tmp_path):
    _, config = load(
        tmp_path,
        "  head_timeout: 2.5\n  body_idle_timeout: 7\n  keepalive_timeout: 0.5\n"
        "  max_connections: 100\n  max_body_bytes: 1000\n",
    )
    assert config.limits == Limits(
        max_body_bytes=1000,
        head_timeout=2.5,
        body_idle_timeout=7,
        keepalive_timeout=0.5,
        max_connections=100,
    )


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ("head_timeout: 0", "limits.head_timeout", "must be a number greater than 0"),
        ("body_idle_timeout: -1", "limits.body_idle_timeout", "greater than 0"),
        ("keepalive_timeout: soon", "limits.keepalive_timeout", "must be a number"),
        ("keepalive_timeout: true", "limits.keepalive_timeout", "must be a number"),
        ("head_timeout: .inf", "limits.head_timeout", "must be a finite number"),
        ("body_idle_timeout: .nan", "limits.body_idle_timeout", "must be a finite number"),
        ("max_connections: 0", "limits.max_connections", "must be an integer greater than 0"),
        ("max_connections: 10.5", "limits.max_connections", "must be an integer"),
        ("header_timeout: 5", "limits.header_timeout", "unknown key"),
    ],
)
def test_bad_values_name_the_file_and_the_field(tmp_path, line, field, message):
    found = problems(tmp_path, f"  {line}\n")
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'gateway.yaml'}: field '{field}': ")
    assert message in found[0]


def test_every_bad_limit_is_reported_at_once(tmp_path):
    found = problems(tmp_path, "  head_timeout: 0\n  max_connections: -3\n")
    assert [p.split("field ")[1].split(":")[0] for p in found] == [
        "'limits.head_timeout'",
        "'limits.max_connections'",
    ]


@pytest.mark.parametrize(
    ("soft", "cap"),
    [
        (256, 32),  # (256 - 64 reserved - 128 accept burst) / 2: upstreams get the other half
        (1024, 416),
        (1 << 20, (1 << 20) // 2 - 96),
        (100, 8),  # never below 8
        (-1, 1 << 30),  # RLIM_INFINITY
    ],
)
def test_the_fd_limit_bounds_the_connection_cap(soft, cap):
    assert fd_connection_cap(soft) == cap
