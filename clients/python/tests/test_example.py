"""The FastAPI example: its fake downloader's events reach a subscriber through modelcast."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def test_the_example_app_publishes_a_download(server, collector, monkeypatch) -> None:
    monkeypatch.setenv("MODELCAST_URL", server.base)
    from examples.fastapi_app import app
    from modelcast import integrator as module

    module._instances.clear()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:
            response = await http.post("/downloads/ex-1")
            assert response.status_code == 202
        await collector.wait_for(
            lambda f: f["type"] == "download_status_change" and f["data"]["new_status"] == "completed"
        )
    module._instances.clear()
    events = [f["data"]["event"] for f in collector.of_type("download_status_change")]
    assert events == ["started", "completed"]
    progress = collector.of_type("download_progress_update")
    assert progress and progress[0]["data"]["model_id"] == "ex-1"
