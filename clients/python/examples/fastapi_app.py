"""A FastAPI backend with a fake downloader that reports through modelcast — the seed's
integration, with modelcast in place of the in-process WebSocket manager.

Run it (from clients/python, with the package installed: `pip install -e . fastapi uvicorn`):

    cargo run --release -p modelcast-server        # in the repository root, or any modelcast
    MODELCAST_URL=http://127.0.0.1:8000 uvicorn examples.fastapi_app:app --port 9000
    curl -XPOST localhost:9000/downloads/t2v-a14b  # then watch http://127.0.0.1:8000/

The pattern to copy, for a backend whose users follow its work through modelcast:

- **The first event decides the answer.** The handler publishes `download_started` before it
  answers: 202 means the hub has it, so the user's screen will show the download. If the hub
  cannot be reached (the publisher's retries ran out: `UnavailableError`), nothing is started
  and the answer is 503 with `Retry-After`: the user could not follow a download started now.
- **After that, the work does not depend on the hub.** A notification that fails mid-download
  is logged (once per download) and the download goes on; the final state is tried again, so a
  hub that is back by then shows it (modelcast keeps the last state per model for late joiners).
- **No exception goes unobserved.** Every background task has a done callback that logs what
  it died of, so asyncio never says "Task exception was never retrieved".
- **Load what is wanted.** With the server's `MODELCAST_DEMAND_WEBHOOK` pointed at
  `POST /modelcast/demand` (and `MODELCAST_DEMAND_WEBHOOK_SECRET` set in both), a model
  someone starts watching is preloaded (here: the fake download), and one no one watches any
  more is unloaded. A call that is not modelcast's (a bad signature) is answered 400."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from modelcast import DemandHandler, UnavailableError, WebhookError, get_model_notification_integrator

log = logging.getLogger("examples.fastapi_app")

#: Seconds a client is told to wait before trying again when the hub is down.
RETRY_AFTER_SECONDS = 5


class FakeDownloader:
    """Pretends to download: started, progress in steps, completed. It knows nothing about
    modelcast: it calls whatever was registered with `add_notification_callback`."""

    def __init__(self, step_delay: float = 0.05, steps: int = 5) -> None:
        self.step_delay = step_delay
        self.steps = steps
        self._callbacks: list[Callable[..., Awaitable[Any]]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def add_notification_callback(self, callback: Callable[..., Awaitable[Any]]) -> None:
        self._callbacks.append(callback)

    async def _emit(self, event: str, *args: Any, **kwargs: Any) -> None:
        for callback in self._callbacks:
            await callback(event, *args, **kwargs)

    async def start(self, model_id: str, total_mb: float = 1000.0) -> None:
        """Announces the download (raising what the announcement raised: nothing is started
        then), and runs it in the background."""
        await self._emit("download_started", model_id, total_mb=total_mb)
        task = asyncio.create_task(self._run(model_id, total_mb), name=f"download {model_id}")
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _run(self, model_id: str, total_mb: float) -> None:
        warned = False

        async def notify(event: str, *args: Any) -> None:
            nonlocal warned
            try:
                await self._emit(event, model_id, *args)
            except UnavailableError as error:  # the hub is down; the download is not (a bug still raises)
                if not warned:
                    log.warning("notifications for %s are not getting through (%s); downloading on", model_id, error)
                    warned = True

        for step in range(1, self.steps + 1):
            await asyncio.sleep(self.step_delay)
            done = total_mb * step / self.steps
            await notify("download_progress", {"downloaded_mb": done, "speed_mbps": 50.0})
        await notify("download_completed")


@asynccontextmanager
async def lifespan(app: FastAPI):
    # One downloader per run of the app, hooked to the integrator it lives with.
    app.state.downloader = downloader = FakeDownloader()
    integrator = get_model_notification_integrator()  # MODELCAST_URL / MODELCAST_API_KEY
    await integrator.setup_component_integrations(enhanced_downloader=downloader)
    yield
    await asyncio.gather(*downloader.tasks, return_exceptions=True)
    await integrator.aclose()


app = FastAPI(title="modelcast example backend", lifespan=lifespan)

#: The models this backend holds loaded (preloaded on demand, unloaded when unwatched).
loaded: set[str] = set()


async def on_demand(model_id: str, watchers: int) -> None:
    """Preloads a model someone watches; unloads one no one does."""
    if watchers > 0 and model_id not in loaded:
        loaded.add(model_id)
        try:
            await app.state.downloader.start(model_id)
        except UnavailableError as error:  # the hub is down: loaded all the same, not announced
            log.warning("preloading %s without notifications: %s", model_id, error)
    elif watchers == 0:
        loaded.discard(model_id)


@app.post("/modelcast/demand", status_code=204)
async def demand(request: Request) -> None:
    """modelcast's demand webhook: verified with MODELCAST_DEMAND_WEBHOOK_SECRET, then
    `on_demand`. 400 for a call that is not modelcast's."""
    handler = DemandHandler(os.environ.get("MODELCAST_DEMAND_WEBHOOK_SECRET", ""), on_demand)
    try:
        await handler.handle(request.headers, await request.body())
    except WebhookError as error:
        raise HTTPException(status_code=400, detail=str(error)) from error


@app.post("/downloads/{model_id}", status_code=202)
async def start_download(model_id: str, request: Request) -> dict[str, str]:
    """Starts a fake download whose progress is published to modelcast; 503 (and nothing
    started) when modelcast cannot be reached."""
    try:
        await request.app.state.downloader.start(model_id)
    except UnavailableError as error:
        raise HTTPException(
            status_code=503,
            detail={"error": "notifications_unavailable", "message": str(error)},
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from error
    return {"model_id": model_id, "status": "started"}
