"""The seed's entry point: `get_model_notification_integrator()` and the integrator that hands
each model component its notifier.

Component contract (`setup_component_integrations`): a component that emits events exposes
`add_notification_callback(callback)`. The integrator registers an async
`callback(event, *args, **kwargs)`; the component awaits it with the notifier method's name
without `on_` and its arguments, e.g. `await callback("download_progress", model_id,
progress_data)` → `DownloadNotifier.on_download_progress(model_id, progress_data)`. An event
the notifier does not have raises `MappingError` in the component's call. A component without
`add_notification_callback` is refused with a TypeError (nothing is silently left unhooked)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .errors import MappingError
from .notifiers import AvailabilityNotifier, DownloadNotifier, FallbackNotifier, HealthNotifier, SystemNotifier
from .publisher import Publisher

Callback = Callable[..., Awaitable[Any]]


def _callback(notifier: object) -> Callback:
    async def callback(event: str, *args: Any, **kwargs: Any) -> Any:
        method = getattr(notifier, f"on_{event}", None)
        if method is None:
            known = sorted(name[3:] for name in dir(notifier) if name.startswith("on_"))
            raise MappingError(f"{type(notifier).__name__} has no event {event!r}; known: {', '.join(known)}")
        return await method(*args, **kwargs)

    return callback


class ModelNotificationIntegrator:
    """Owns one `Publisher` and the notifiers built on it."""

    def __init__(self, url: str | None = None, api_key: str | None = None) -> None:
        self.publisher = Publisher(url, api_key)
        self._download = DownloadNotifier(self.publisher)
        self._health = HealthNotifier(self.publisher)
        self._availability = AvailabilityNotifier(self.publisher)
        self._fallback = FallbackNotifier(self.publisher)
        self._system = SystemNotifier(self.publisher)

    async def setup_component_integrations(
        self,
        enhanced_downloader: object | None = None,
        health_monitor: object | None = None,
        availability_manager: object | None = None,
        fallback_manager: object | None = None,
    ) -> None:
        """Hooks each given component to its notifier (see the module docs for the contract)."""
        pairs = [
            ("enhanced_downloader", enhanced_downloader, self._download),
            ("health_monitor", health_monitor, self._health),
            ("availability_manager", availability_manager, self._availability),
            ("fallback_manager", fallback_manager, self._fallback),
        ]
        for name, component, notifier in pairs:
            if component is None:
                continue
            hook = getattr(component, "add_notification_callback", None)
            if not callable(hook):
                raise TypeError(
                    f"{name} ({type(component).__name__}) has no add_notification_callback(callback): "
                    "modelcast hooks components through it (see modelcast.integrator)"
                )
            result = hook(_callback(notifier))
            if isinstance(result, Awaitable):
                await result

    def get_download_notifier(self) -> DownloadNotifier:
        """Downloads: progress, state changes, retries."""
        return self._download

    def get_health_notifier(self) -> HealthNotifier:
        """Health checks, corruption, degradation, repairs."""
        return self._health

    def get_availability_notifier(self) -> AvailabilityNotifier:
        """Model status, availability, lifecycle, recommendations."""
        return self._availability

    def get_fallback_notifier(self) -> FallbackNotifier:
        """Fallback strategies, alternatives, queue positions."""
        return self._fallback

    def get_system_notifier(self) -> SystemNotifier:
        """System stats, generation progress, the queue, alerts."""
        return self._system

    async def aclose(self) -> None:
        """Closes the publisher's connections."""
        await self.publisher.aclose()


_instances: dict[tuple[str | None, str | None], ModelNotificationIntegrator] = {}


def get_model_notification_integrator(
    url: str | None = None, api_key: str | None = None
) -> ModelNotificationIntegrator:
    """The integrator (one per `url`/`api_key`). Without arguments it is configured from
    `MODELCAST_URL` (`http://host:port` or `ws://host:port/ws`; default
    `http://127.0.0.1:8000`) and `MODELCAST_API_KEY`; arguments override them."""
    key = (url, api_key)
    if key not in _instances:
        _instances[key] = ModelNotificationIntegrator(url, api_key)
    return _instances[key]
