"""`gateway check --probe` through the real CLI: every upstream the config names
is connected to (or its discovery name resolved), and one this machine cannot
reach is a problem naming the provider and the field."""

from __future__ import annotations

import textwrap

from tests.integration.test_cli import run_cli
from tests.support import dead_url


def _config(tmp_path, body: str):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(body))
    return path


async def test_probe_names_the_replica_nobody_listens_on(tmp_path, upstream):
    dead = dead_url()
    path = _config(
        tmp_path,
        f"""
        providers:
          - name: pool
            replicas: [{upstream.base_url}, {dead}]
            api_key: env:PROBE_KEY
          - name: single
            base_url: {upstream.base_url}
        """,
    )
    env_ok = {"PROBE_KEY": "sk-probe"}
    code, _, err = await run_cli("check", "--config", str(path), env=_env(env_ok))
    assert code == 0, err  # the plain check reads files only
    code, _, err = await run_cli("check", "--probe", "--config", str(path), env=_env(env_ok))
    assert code == 1
    assert f"provider 'pool': field 'replicas[1]': unreachable ({dead})" in err
    assert "replicas[0]" not in err and "'single'" not in err  # those answered
    assert "1 problem" in err


async def test_probe_passes_when_everything_answers(tmp_path, upstream):
    path = _config(
        tmp_path,
        f"""
        providers:
          - name: single
            base_url: {upstream.base_url}
        """,
    )
    code, out, err = await run_cli("check", "--probe", "--config", str(path))
    assert code == 0, err
    assert "OK (1 provider: single)" in out


async def test_probe_reports_a_discovery_name_that_does_not_resolve(tmp_path):
    path = _config(
        tmp_path,
        """
        providers:
          - name: svc
            base_url: http://no-such-host.invalid:8000/v1
            discovery: {dns: true}
        """,
    )
    code, _, err = await run_cli("check", "--probe", "--config", str(path))
    assert code == 1
    assert (
        "provider 'svc': field 'base_url': unreachable (http://no-such-host.invalid:8000/v1)" in err
    )


def _env(extra: dict[str, str]) -> dict[str, str]:
    from tests.integration.test_cli import cli_env

    return {**cli_env(), **extra}
