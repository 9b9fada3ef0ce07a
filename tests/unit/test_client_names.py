"""`auth.api_keys` entries carry client names: the `client` label, never a key."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_config
from tests.unit.test_config import problems, write


def test_named_and_plain_entries(tmp_path):
    path = write(
        tmp_path,
        """
        auth:
          api_keys:
            - {name: team-a, key: env:K1}
            - plain-key
            - {key: env:K3, name: batch_jobs}
        """,
    )
    auth = load_config(path).auth
    assert auth.names == ("team-a", "key-2", "batch_jobs")
    assert [k.field for k in auth.api_keys] == [
        "auth.api_keys[0].key",
        "auth.api_keys[1]",
        "auth.api_keys[2].key",
    ]
    assert all(k.scope == "auth" for k in auth.api_keys)


@pytest.mark.parametrize(
    ("entries", "field", "message"),
    [
        ("[{key: k1}]", "auth.api_keys[0].name", "required: a slug"),
        ("[{name: Team A, key: k1}]", "auth.api_keys[0].name", "required: a slug"),
        ("[{name: a}]", "auth.api_keys[0].key", "must be a non-empty string"),
        ("[{name: a, key: k1, role: x}]", "auth.api_keys[0].role", "unknown key"),
        ("[{name: a, key: k1}, {name: a, key: k2}]", "auth.api_keys[1].name", "duplicate"),
        # A plain entry's positional name taken by a named one.
        ("[{name: key-2, key: k1}, k2]", "auth.api_keys[1]", "duplicate client name 'key-2'"),
        # The names the gateway gives requests itself.
        ("[{name: playground, key: k1}]", "auth.api_keys[0].name", "'playground' is the gateway's"),
        ("[{name: anonymous, key: k1}]", "auth.api_keys[0].name", "'anonymous' is the gateway's"),
    ],
)
def test_entry_problems_name_the_field(tmp_path, entries, field, message):
    path = write(tmp_path, f"auth: {{api_keys: {entries}}}\n")
    found = problems(path)
    assert any(f == field and message in m for _, _, f, m in found), found
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for secret in ("k1", "k2"):  # the problems never quote a key
        assert f"'{secret}'" not in str(info.value)
