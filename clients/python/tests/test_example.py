"""The FastAPI example: its fake downloader's events reach a subscriber through modelcast; with
modelcast down it answers 503 and starts nothing; a hub lost mid-download leaves the download
running and no task exception unobserved."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from conftest import free_port

from modelcast import RetryPolicy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from examples.fastapi_app import RETRY_AFTER_SECONDS


@asynccontextmanager
async def example_app(url: str, monkeypatch) -> AsyncIterator[tuple[Any, httpx.AsyncClient, list[dict[str, Any]]]]:
    """The example app's lifespan and an HTTP client for it, with the event loop's unhandled
    exceptions ("Task exception was never retrieved", …) collected."""
    monkeypatch.setenv("MODELCAST_URL", url)
    from examples import fastapi_app
    from modelcast import integrator as module

    module._instances.clear()
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    app = fastapi_app.app
    try:
        async with app.router.lifespan_context(app):
            # Quick retries: the default policy waits up to ~3 s before giving up.
            module._instances[(None, None)].publisher.retry = RetryPolicy(attempts=2, initial_delay=0.05)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://example") as http:
                yield app.state, http, unhandled
    finally:
        module._instances.clear()
        gc.collect()  # a task that died unobserved is reported when it is collected
        loop.set_exception_handler(None)


async def test_the_example_app_publishes_a_download(server, collector, monkeypatch) -> None:
    async with example_app(server.base, monkeypatch) as (_, http, unhandled):
        response = await http.post("/downloads/ex-1")
        assert response.status_code == 202
        await collector.wait_for(
            lambda f: f["type"] == "download_status_change" and f["data"]["new_status"] == "completed"
        )
    assert unhandled == []
    events = [f["data"]["event"] for f in collector.of_type("download_status_change")]
    assert events == ["started", "completed"]
    progress = collector.of_type("download_progress_update")
    assert progress and progress[0]["data"]["model_id"] == "ex-1"


async def test_with_modelcast_down_the_example_answers_503_and_starts_nothing(monkeypatch, caplog) -> None:
    async with example_app(f"http://127.0.0.1:{free_port()}", monkeypatch) as (state, http, unhandled):
        response = await http.post("/downloads/ex-2")
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert response.json()["detail"]["error"] == "notifications_unavailable"
        assert "connection_failed" in response.json()["detail"]["message"]
        assert state.downloader.tasks == set(), "nothing was started"
    assert unhandled == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_hub_lost_mid_download_is_logged_and_the_download_finishes(server, monkeypatch, caplog) -> None:
    async with example_app(server.base, monkeypatch) as (state, http, unhandled):
        state.downloader.step_delay = 0.2
        response = await http.post("/downloads/ex-3")
        assert response.status_code == 202
        (task,) = state.downloader.tasks
        server.stop()  # the hub goes away after the download started
        await asyncio.wait_for(asyncio.shield(task), timeout=30)
        assert task.exception() is None, "the download ran to its end"
    assert unhandled == []
    warnings = [r for r in caplog.records if "not getting through" in r.getMessage()]
    assert len(warnings) == 1, "one warning per download, not one per event"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_example_preloads_a_model_on_demand_and_refuses_an_unsigned_call(
    server, collector, monkeypatch
) -> None:
    import json
    import time

    from examples import fastapi_app
    from modelcast.webhooks import sign

    secret = "a-demand-secret-of-some-length"
    monkeypatch.setenv("MODELCAST_DEMAND_WEBHOOK_SECRET", secret)
    async with example_app(server.base, monkeypatch) as (_, http, unhandled):
        body = json.dumps({"type": "model.watched", "data": {"model_id": "wanted-1", "watchers": 2}}).encode()
        stamp = int(time.time())
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp), "content-type": "application/json"}
        forged = await http.post("/modelcast/demand", content=body, headers={**headers, "webhook-signature": "v1,AAAA"})
        assert forged.status_code == 400
        assert "wanted-1" not in fastapi_app.loaded
        signed = {**headers, "webhook-signature": sign(secret, "msg_1", stamp, body)}
        response = await http.post("/modelcast/demand", content=body, headers=signed)
        assert response.status_code == 204
        assert "wanted-1" in fastapi_app.loaded
        await collector.wait_for(
            lambda f: f["type"] == "download_status_change" and f["data"]["model_id"] == "wanted-1"
        )
        unwatched = json.dumps({"type": "model.unwatched", "data": {"model_id": "wanted-1", "watchers": 0}}).encode()
        signed = {**headers, "webhook-signature": sign(secret, "msg_1", stamp, unwatched)}
        assert (await http.post("/modelcast/demand", content=unwatched, headers=signed)).status_code == 204
        assert "wanted-1" not in fastapi_app.loaded
    assert unhandled == []
