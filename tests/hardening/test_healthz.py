"""``/healthz`` tells anonymous callers the status only; the detail (with URLs stripped of
credentials) needs the API key.

Ceiling: every test runs under ``trio.fail_after(30)``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from archon_chat.config import redact_url
from tests.e2e.agents_fake import AgentsFake
from tests.e2e.support import gateway_settings, running_gateway


def test_redact_url() -> None:
    assert redact_url("http://user:pass@host:1/x") == "http://***@host:1/x"
    assert redact_url("http://host:1") == "http://host:1"


@pytest.mark.slow
async def test_healthz_detail_needs_the_api_key(tmp_path: Path) -> None:
    with trio.fail_after(30):
        agents = AgentsFake()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(agents.serve)
            url = f"http://user:secret@127.0.0.1:{port}"
            settings = gateway_settings(tmp_path, url, api_key="k3y")
            async with running_gateway(settings) as gw:
                async with httpx.AsyncClient(base_url=gw.url) as http:
                    for headers in ({}, {"Authorization": "Bearer nope"}):
                        r = await http.get("/healthz", headers=headers)
                        assert r.status_code == 200
                        assert r.json() == {"status": "ok"}
                    r = await http.get("/healthz", headers={"Authorization": "Bearer k3y"})
                    body = r.json()
                    assert r.status_code == 200 and body["status"] == "ok"
                    assert body["agents"]["url"] == f"http://***@127.0.0.1:{port}"
                    assert "secret" not in r.text
            nursery.cancel_scope.cancel()
