"""modelcast for Python backends: publish the seed's model notifications to a modelcast
server (`Publisher`, the seed's integrator and notifiers), and optionally subscribe.

```python
from modelcast import get_model_notification_integrator

integrator = get_model_notification_integrator()          # MODELCAST_URL, MODELCAST_API_KEY
await integrator.get_download_notifier().on_download_progress("t2v-a14b", {"progress_percent": 45.5, "total_mb": 1000})
```

`modelcast.models` holds the message models generated from the server's JSON Schemas."""

from . import models
from .errors import MappingError, ModelcastError, Problem, PublishError, PushError, UnavailableError
from .integrator import ModelNotificationIntegrator, get_model_notification_integrator
from .messages import DATA_MODELS, TYPE_NAMES
from .notifiers import AvailabilityNotifier, DownloadNotifier, FallbackNotifier, HealthNotifier, SystemNotifier
from .publisher import Accepted, Audience, Publisher, RetryPolicy, SyncPublisher
from .push import Device, PushDevices, vapid_public_key
from .subscribe import REMEMBERED_MESSAGES, Gap, SubscriptionError, subscribe
from .urls import http_base, ws_url
from .webhooks import DemandHandler, WebhookError

__all__ = [
    "DATA_MODELS",
    "REMEMBERED_MESSAGES",
    "TYPE_NAMES",
    "Accepted",
    "Audience",
    "AvailabilityNotifier",
    "DemandHandler",
    "Device",
    "DownloadNotifier",
    "FallbackNotifier",
    "Gap",
    "HealthNotifier",
    "MappingError",
    "ModelNotificationIntegrator",
    "ModelcastError",
    "Problem",
    "PublishError",
    "Publisher",
    "PushDevices",
    "PushError",
    "RetryPolicy",
    "SubscriptionError",
    "SyncPublisher",
    "SystemNotifier",
    "UnavailableError",
    "WebhookError",
    "get_model_notification_integrator",
    "http_base",
    "models",
    "subscribe",
    "vapid_public_key",
    "ws_url",
]
