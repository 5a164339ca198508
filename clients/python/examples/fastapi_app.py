"""A FastAPI backend with a fake downloader that reports through modelcast — the seed's
integration, with modelcast in place of the in-process WebSocket manager.

Run a modelcast server (`cargo run --release -p modelcast-server`), then
`MODELCAST_URL=http://127.0.0.1:8000 uvicorn examples.fastapi_app:app --port 9000` from
clients/python, `curl -XPOST localhost:9000/downloads/t2v-a14b`, and watch
`http://127.0.0.1:8000/`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from modelcast import get_model_notification_integrator


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

    def start(self, model_id: str, total_mb: float = 1000.0) -> None:
        task = asyncio.create_task(self._run(model_id, total_mb))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, model_id: str, total_mb: float) -> None:
        await self._emit("download_started", model_id, total_mb=total_mb)
        for step in range(1, self.steps + 1):
            await asyncio.sleep(self.step_delay)
            done = total_mb * step / self.steps
            await self._emit("download_progress", model_id, {"downloaded_mb": done, "speed_mbps": 50.0})
        await self._emit("download_completed", model_id)


downloader = FakeDownloader()


@asynccontextmanager
async def lifespan(_: FastAPI):
    integrator = get_model_notification_integrator()  # MODELCAST_URL / MODELCAST_API_KEY
    await integrator.setup_component_integrations(enhanced_downloader=downloader)
    yield
    await asyncio.gather(*downloader.tasks, return_exceptions=True)
    await integrator.aclose()


app = FastAPI(title="modelcast example backend", lifespan=lifespan)


@app.post("/downloads/{model_id}", status_code=202)
async def start_download(model_id: str) -> dict[str, str]:
    """Starts a fake download; its progress is published to modelcast."""
    downloader.start(model_id)
    return {"model_id": model_id, "status": "started"}
